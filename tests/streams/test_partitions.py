"""Partitions on Redis Cluster slots (``streams.keys``, layout "2").

Partition p of P has a hash tag in the middle slot of the p-th of P equal slot
ranges, so a Cluster whose M masters hold equal contiguous slot ranges (as
``redis-cli --cluster create`` and ``api.dev.cluster`` make it) holds the
partitions evenly: P / M on each master when M divides P, and for M <= 16
never more than one apart. A Redis that holds a ledger of the old layout
(``{p<N>}`` tags) is refused, like one with another partition count.
"""

from __future__ import annotations

import binascii
import math
import pickle
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence

import pytest
import redis as redis_py
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from ledger.tasks import Priority
from streams import ConfigError, QueueManager, StreamsConfig, keys
from streams.config import DEFAULT_PARTITIONS
from streams.connection import check_partitions, ensure_partitions
from tests.streamlog import keys_matching

SLOTS = keys.SLOTS

TAGS_OF_16 = [
    "p0_14921",
    "p1_23759",
    "p2_734",
    "p3_3810",
    "p4_16294",
    "p5_40831",
    "p6_2937",
    "p7_8869",
    "p8_4297",
    "p9_619",
    "p10_42173",
    "p11_28282",
    "p12_18839",
    "p13_4548",
    "p14_24969",
    "p15_5480",
]
"""The default deployment's tags: they are where its data lives, so they never change."""


# -- how a Cluster is usually formed: M masters, equal contiguous slot ranges ---------


def floor_ranges(m: int) -> list[int]:
    """First slot of each master: ``i * 16384 // M``."""
    return [i * SLOTS // m for i in range(m)]


def redis_cli_ranges(m: int) -> list[int]:
    """First slot of each master as ``redis-cli --cluster create`` splits them
    (a float cursor, each range ending at ``lroundf(cursor + per_node - 1)``)."""
    per_node, cursor, first, starts = SLOTS / m, 0.0, 0, []
    for i in range(m):
        last = math.floor(cursor + per_node - 1 + 0.5)
        if last > SLOTS or i == m - 1:
            last = SLOTS - 1
        starts.append(first)
        first, cursor = max(last, first) + 1, cursor + per_node
    return starts


def dev_cluster_ranges(m: int) -> list[int]:
    """First slot of each master as ``api.dev.cluster`` splits them (the rest to the last)."""
    return [i * (SLOTS // m) for i in range(m)]


RANGES: list[Callable[[int], list[int]]] = [floor_ranges, redis_cli_ranges, dev_cluster_ranges]


def per_master(slots: Sequence[int], starts: Sequence[int]) -> list[int]:
    """How many of ``slots`` each master (first slots ``starts``) holds."""
    held = Counter(max(i for i, first in enumerate(starts) if first <= s) for s in slots)
    return [held[i] for i in range(len(starts))]


def balanced(counts: Sequence[int], p: int) -> bool:
    m = len(counts)
    return sum(counts) == p and all(p // m <= c <= -(-p // m) for c in counts)


# -- slots ---------------------------------------------------------------------------


@given(st.binary(max_size=64).filter(lambda b: b"{" not in b))
def test_crc16_is_redis_key_slot(data: bytes) -> None:
    assert binascii.crc_hqx(data, 0) % SLOTS == key_slot(data)


@given(
    st.text(
        alphabet=st.characters(codec="utf-8", blacklist_characters="{}"), min_size=1, max_size=20
    )
)
def test_slot_of_a_hash_tag_is_the_slot_of_its_keys(tag: str) -> None:
    assert keys.slot_of(tag) == key_slot(f"ledger:{{{tag}}}:acct:x".encode())


@pytest.mark.parametrize("count", [*range(1, 65), 100, 128, 256, 1000, 1024])
def test_each_partition_sits_in_the_middle_of_its_slot_range(count: int) -> None:
    parts = keys.partitions(count)
    assert [int(p) for p in parts] == list(range(count))
    for p in parts:
        low, high = p * SLOTS // count, (p + 1) * SLOTS // count
        assert low <= p.slot < high
        assert p.slot == keys.target_slot(p, count) == key_slot(keys.tag(p).encode())
        assert p.hash_tag.startswith(f"p{p}_") and p.hash_tag[len(f"p{p}_") :].isdigit()
    assert len({p.hash_tag for p in parts}) == count
    assert len({p.slot for p in parts}) == count


def test_the_default_tags_never_change() -> None:
    assert DEFAULT_PARTITIONS == 16
    assert [p.hash_tag for p in keys.partitions(16)] == TAGS_OF_16
    assert keys.stream(keys.partitions(16)[3], Priority.NORMAL) == "ledger:{p3_3810}:normal"


@pytest.mark.parametrize(
    "count, which",
    [(16, range(16)), (64, [9, 34])],  # 9 and 34 of 64: found by the fall-back past 99999
)
def test_a_tag_takes_the_smallest_number_that_hits_its_slot(
    count: int, which: Sequence[int]
) -> None:
    """The lookup table (and its fall-back) finds what counting up from 0 finds."""
    for p in (keys.partitions(count)[i] for i in which):
        k = int(p.hash_tag.split("_")[1])
        head = f"p{p}_".encode()
        crc = binascii.crc_hqx(head, 0)
        hits = [j for j in range(k + 1) if binascii.crc_hqx(str(j).encode(), crc) % SLOTS == p.slot]
        assert hits == [k]


def test_tags_are_safe_in_every_place_a_key_goes() -> None:
    """No "." (a MongoDB field name: the checkpoints), ":" (keys split on it), braces,
    glob characters (SCAN MATCH) or "|" / "/" (joined fields)."""
    for p in keys.partitions(keys.MAX_PARTITIONS):
        assert not set(p.hash_tag) & set(".:{}*?[]\\|/ ")


def test_tags_of_the_largest_count_are_computed_quickly() -> None:
    keys.partitions.cache_clear()
    keys._suffixes.cache_clear()
    started = time.perf_counter()
    keys.partitions(16)
    small = time.perf_counter() - started
    started = time.perf_counter()
    keys.partitions(keys.MAX_PARTITIONS)
    large = time.perf_counter() - started
    assert small < 0.5 and large < 1.0, (small, large)
    assert keys.partitions(16) is keys.partitions(16)  # once per count


# -- masters -------------------------------------------------------------------------


@pytest.mark.parametrize("ranges", RANGES)
@pytest.mark.parametrize("masters", [3, 16])
@pytest.mark.parametrize("count", [16, 64, 128])
def test_masters_of_a_usual_cluster_hold_the_partitions_evenly(
    count: int, masters: int, ranges: Callable[[int], list[int]]
) -> None:
    counts = per_master([p.slot for p in keys.partitions(count)], ranges(masters))
    assert balanced(counts, count), counts


def test_sixteen_masters_hold_one_default_partition_each() -> None:
    parts = keys.partitions(DEFAULT_PARTITIONS)
    for ranges in RANGES:
        assert per_master([p.slot for p in parts], ranges(16)) == [1] * 16
    # partition i on master i: its slot lies in the i-th sixteenth
    assert [p.slot * 16 // SLOTS for p in parts] == list(range(16))


@settings(max_examples=300)
@given(st.integers(1, keys.MAX_PARTITIONS), st.integers(1, 16))
def test_up_to_sixteen_masters_never_hold_more_than_one_apart(count: int, masters: int) -> None:
    slots = [keys.target_slot(p, count) for p in range(count)]  # p.slot (checked above)
    for ranges in RANGES:
        assert balanced(per_master(slots, ranges(masters)), count)


@settings(max_examples=300)
@given(st.integers(1, 64), st.integers(1, 64))
def test_masters_that_divide_the_count_hold_exactly_their_share(masters: int, k: int) -> None:
    count = masters * k
    if count > keys.MAX_PARTITIONS:
        return
    slots = [keys.target_slot(p, count) for p in range(count)]
    for ranges in (floor_ranges, redis_cli_ranges):
        assert per_master(slots, ranges(masters)) == [k] * masters


def test_the_test_cluster_holds_every_partition_of_eight_on_three_masters() -> None:
    """tests/cluster run 3 masters and 8 partitions: 3, 2 and 3 of them."""
    slots = [p.slot for p in keys.partitions(8)]
    assert per_master(slots, dev_cluster_ranges(3)) == [3, 2, 3]


# -- keys of a partition ---------------------------------------------------------------


def all_keys(p: keys.Partition, user: str) -> list[str]:
    return [
        *(keys.stream(p, level) for level in keys.LEVELS_DESC),
        keys.account(p, user),
        keys.idempotency(p, user, "k:{x}"),
        keys.transactions(p, user),
        keys.task(p, user),
        keys.attempts(p),
        keys.retry(p, "workers"),
        keys.scheduled(p),
        keys.dead(p),
        keys.stats(p),
        keys.cursor(p),
        keys.latencies(p, "default"),
        keys.throughput(p, "default"),
    ]


@given(
    st.sampled_from([1, 2, 16, 64, 128, 1024]),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=30),
)
def test_every_key_of_a_partition_is_in_its_slot(count: int, user: str) -> None:
    p = keys.partition_of(user, count)
    assert {key_slot(k.encode()) for k in all_keys(p, user)} == {p.slot}


@given(st.text(max_size=40), st.sampled_from([1, 3, 16, 64, 128, 1024]))
def test_an_account_lives_in_crc32_mod_the_count(user: str, count: int) -> None:
    p = keys.partition_of(user, count)
    assert p == zlib.crc32(user.encode("utf-8")) % count
    assert p.hash_tag == keys.partitions(count)[p].hash_tag


def test_partition_of_is_stable() -> None:
    assert [keys.partition_of(u, 16) for u in ("alice", "bob", "u1", "")] == [7, 0, 6, 0]
    assert keys.partition_of("alice", 16).hash_tag == "p7_8869"


def test_stream_keys_parse_back() -> None:
    for p in keys.partitions(64):
        for level in keys.LEVELS_DESC:
            back, lv = keys.parse_stream(keys.stream(p, level))
            assert (back, back.hash_tag, lv) == (p, p.hash_tag, level)
            assert isinstance(back, keys.Partition)


@pytest.mark.parametrize(
    "key", ["ledger:{p0}:normal", "ledger:{p1_2}:urgent", "other:{p1_2}:low", "ledger:p1_2:low"]
)
def test_other_stream_keys_do_not_parse(key: str) -> None:
    with pytest.raises(ValueError):
        keys.parse_stream(key)


def test_a_partition_is_its_number_and_needs_its_count() -> None:
    p = keys.partitions(16)[5]
    assert p == 5 and f"p{p}" == "p5" and {5: "x"}[p] == "x" and str(p) == "5"
    copy = pickle.loads(pickle.dumps(p))
    assert (copy, copy.hash_tag) == (5, p.hash_tag)
    with pytest.raises(TypeError, match="Partition"):
        keys.stream(5, Priority.LOW)  # type: ignore[arg-type]
    for bad in (0, keys.MAX_PARTITIONS + 1):
        with pytest.raises(ValueError):
            keys.partitions(bad)


# -- the layout marker in ledger:meta ----------------------------------------------------


def test_first_use_records_count_and_layout(redis: redis_py.Redis) -> None:
    check_partitions(redis, 4)  # read-only: nothing recorded yet, nothing refused
    assert not redis.exists(keys.META)
    ensure_partitions(redis, 4)
    assert redis.hgetall(keys.META) == {b"partitions": b"4", b"layout": b"2"}
    ensure_partitions(redis, 4)
    check_partitions(redis, 4)
    for refuse in (ensure_partitions, check_partitions):
        with pytest.raises(ConfigError, match="4 partitions; configured 16"):
            refuse(redis, 16)


@pytest.mark.parametrize("refuse", [ensure_partitions, check_partitions])
def test_a_ledger_of_the_old_layout_is_refused(
    redis: redis_py.Redis, refuse: Callable[[redis_py.Redis, int], None]
) -> None:
    redis.hset(keys.META, "partitions", 4)  # what the {pN} version recorded
    redis.xadd("ledger:{p0}:normal", {"k": "e"})
    with pytest.raises(ConfigError, match=r"layout 1 .*Migrate the event log"):
        refuse(redis, 4)
    assert redis.hgetall(keys.META) == {b"partitions": b"4"}  # not stamped as layout 2


def test_a_ledger_of_another_layout_is_refused(redis: redis_py.Redis) -> None:
    redis.hset(keys.META, mapping={"partitions": 16, "layout": "3"})
    with pytest.raises(ConfigError, match="layout '3'"):
        ensure_partitions(redis, 16)


def test_queue_manager_refuses_the_old_layout(redis: redis_py.Redis, redis_url: str) -> None:
    redis.hset(keys.META, "partitions", 4)
    qm = QueueManager(config=StreamsConfig(redis_url=redis_url, partitions=4))
    try:
        with pytest.raises(ConfigError, match="layout"):
            qm.register_user("ann", "ann@example.com")
        assert not keys_matching(redis, "ledger:{p*")  # nothing written
    finally:
        qm.close()
