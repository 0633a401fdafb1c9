"""Every Redis key the ledger uses, in one place.

Keys are partitioned by a hash tag, ``ledger:{<tag>}:…``, so everything one script
touches lives in one Cluster slot: an account's state, its idempotency records,
its partition's priority streams, retry and schedule sets, dead letters and
task status hashes.

    ledger:meta                          hash  partitions (fixed for a deployment), layout ("2")
    ledger:{T}:<level>                 stream  events and tasks of a level: critical|high|normal|low
    ledger:{T}:acct:<user_id>            hash  version balance purchased used head email
    ledger:{T}:idem:<n>:<user_id>:<key>  hash  e v b f   (first response of an Idempotency-Key; TTL)
                                               n = len(user_id): both parts may hold ":"
    ledger:{T}:txn:<user_id>             hash  <transaction_id> -> "e|v|b|f" (kept forever)
    ledger:{T}:holds:<user_id>           hash  <hold_id> -> "credits|expires_at_ms|at_ms|reason":
                                               the account's open holds (append.lua)
    ledger:{T}:holds-due                 zset  <hold_id> by expiry (ms): open holds, for
                                               the scheduler's sweep (streams/holds.py)
    ledger:{T}:task:<task_id>            hash  status attempts queue_name task_type … (TTL once
                                               on a stream; none while scheduled: "data" and
                                               "ttl" wait there for the scheduler)
    ledger:{T}:attempts                  hash  <group>|<level>|<entry id> -> deliveries so far
    ledger:{T}:retry:<group>             zset  <level>|<entry id> by due time (ms)
    ledger:{T}:scheduled                 zset  <task_id> by due time (ms)
    ledger:{T}:dead                    stream  dead letters of this partition
    ledger:{T}:stats                     hash  <counter>:<queue> -> int
    ledger:{T}:cursor                    hash  <group>|<level> -> XAUTOCLAIM cursor
    ledger:{T}:lat:<queue>               list  latest 512 latencies (ms) of processed entries
    ledger:{T}:tput:<queue>              hash  10-second bucket -> entries processed
    ledger:{T}:deps:<task_id>             set  parents a waiting task still waits for
    ledger:{T}:children:<task_id>         set  waiting tasks to tell when this one ends
    ledger:{T}:waiting                   zset  <task_id> of waiting tasks by enqueue time (ms)
    ledger:{T}:outbox                  stream  ends of parents not yet told to their children
                                               (p=parent o=completed|failed|cancelled e c=ids;
                                               group "release"; streams/dependencies.py)
    ledger:{sched}:schedules             zset  <name> by next_run_at (ms): recurring schedules
    ledger:{sched}:schedule:<name>       hash  cron timezone queue_name task_type data priority
                                               next_run_at last_run_at last_task_id …
    ledger:{sched}:firing                 set  names whose claimed tick is not yet enqueued
    ledger:{sched}:firing:<name>         hash  task_id tick queue_name task_type data priority
    ledger:{sched}:schedule-stats        hash  fired -> ticks fired
                                               (streams/schedules.py, lua/tick.lua; one slot)
    ledger:rl:<bucket>                   hash  tokens ts: an API token bucket (api/ratelimit.py;
                                               no hash tag; expires once it would be full again)
                                               bucket = anonymous | addr:<client address>
                                                      | key:<sha256(API key)[:16] hex>

    T = p<N>_<k>: partition N's hash tag, e.g. ledger:{p3_3810}:normal (3 of 16; layout "2").

Partitions and Cluster slots (layout "2"). An account or task lives in partition
``crc32(id) % P`` (``partition_of``); P is fixed for a deployment (``ledger:meta``).
Partition N's tag ``p<N>_<k>`` takes the smallest k >= 0 that puts the tag in slot
``(2N + 1) * 16384 // (2P)``, the middle of the N-th of P equal slot ranges
(``hash_tag``). A Cluster made the usual way (``redis-cli --cluster create``: M
masters, slots split into M equal contiguous ranges) then holds the partitions
evenly: P / M on each master when M divides P, never more than one apart when M <= 16
(tests/streams/test_partitions.py). It grows by moving slots, never by changing P,
and balances best when P is a multiple of its master counts. The tag depends on P,
so a key builder takes a ``Partition`` (``partitions(P)``, ``partition_of``,
``parse_stream``), never a bare number. Layout "1" (tags ``{p<N>}``, slots at
random) is refused (``connection.ensure_partitions``). Tags hold no ".": stream keys
are field names of the projections' checkpoints (MongoDB reads "." as a path).

Where a key or field joins several values, at most one of them is free text, or
the free text is length-prefixed: user ids and Idempotency-Keys may both hold
":", so ``idem:<user>:<key>`` would let ``a0`` + ``x:k`` and ``a0:x`` + ``k``
share a record. Levels are one digit and entry ids ``<ms>-<seq>``, so the
``|``-joined fields split from the right; ``<counter>`` is a fixed word without
":"; group and queue names come from configuration, not from requests.
Stream entry ids compare as numbers (``streams.ids.parse_id``), never as text.
"""

from __future__ import annotations

import binascii
import functools
import itertools
import re
import zlib

from ledger.tasks import Priority

PREFIX = "ledger"
META = f"{PREFIX}:meta"
LAYOUT = "2"
"""The key layout this code reads and writes (``ledger:meta`` field ``layout``)."""

SLOTS = 16384
"""Redis Cluster's hash slots."""
MAX_PARTITIONS = 1024

LEVEL_NAMES: dict[Priority, str] = {
    Priority.CRITICAL: "critical",
    Priority.HIGH: "high",
    Priority.NORMAL: "normal",
    Priority.LOW: "low",
}
LEVEL_BY_NAME = {name: level for level, name in LEVEL_NAMES.items()}
LEVELS_DESC: tuple[Priority, ...] = tuple(sorted(Priority, reverse=True))

_MASK = SLOTS - 1  # x % 16384 == x & _MASK, and & commutes with ^
_TABLE_DIGITS = 5
_TAG_RE = re.compile(r"\{(p(\d{1,4})_\d{1,12})\}")


class Partition(int):
    """A partition's number (0..P-1) that knows its hash tag.

    It is an ``int``: it sorts, prints and keys a dict like its number. The key
    builders take only a Partition: the tag depends on the partition count, which
    a bare number does not carry. Get them from ``partitions``, ``partition_of``
    or ``parse_stream``.
    """

    hash_tag: str
    """``p<N>_<k>``, what the keys hold between braces."""

    def __new__(cls, number: int, hash_tag: str) -> Partition:
        self = super().__new__(cls, number)
        self.hash_tag = hash_tag
        return self

    def __getnewargs__(self) -> tuple[int, str]:  # type: ignore[override]
        return int(self), self.hash_tag

    @property
    def slot(self) -> int:
        """The Cluster slot of every key of this partition."""
        return slot_of(self.hash_tag)


def slot_of(hash_tag: str) -> int:
    """The Cluster slot of a key with this hash tag: CRC16-XMODEM mod 16384."""
    return binascii.crc_hqx(hash_tag.encode(), 0) % SLOTS


def target_slot(p: int, count: int) -> int:
    """The middle slot of the p-th of ``count`` equal slot ranges."""
    return (2 * p + 1) * SLOTS // (2 * count)


@functools.cache
def _suffixes() -> tuple[dict[int, int], ...]:
    """For n = 1.._TABLE_DIGITS digits: CRC16(str(k)) & _MASK -> the smallest such k."""
    tables: tuple[dict[int, int], ...] = tuple({} for _ in range(_TABLE_DIGITS))
    for k in range(10**_TABLE_DIGITS):
        digits = str(k).encode()
        tables[len(digits) - 1].setdefault(binascii.crc_hqx(digits, 0) & _MASK, k)
    return tables


def hash_tag(p: int, count: int) -> str:
    """``p<p>_<k>`` with the smallest k >= 0 whose slot is ``target_slot(p, count)``.

    The CRC has no final XOR, so it is linear: CRC(head + digits) = CRC(n zero
    bytes, from CRC(head)) ^ CRC(digits) for n digits. One table of the digits'
    CRCs (``_suffixes``) answers for every head; a miss (~1%) counts on from 10^5.
    """
    if not 0 <= p < count <= MAX_PARTITIONS:
        raise ValueError(f"no partition {p} of {count}")
    head = f"p{p}_"
    crc = binascii.crc_hqx(head.encode(), 0)
    want = target_slot(p, count)
    for n, table in enumerate(_suffixes(), start=1):
        k = table.get(want ^ (binascii.crc_hqx(bytes(n), crc) & _MASK))
        if k is not None:
            return f"{head}{k}"
    for k in itertools.count(10**_TABLE_DIGITS):
        if binascii.crc_hqx(str(k).encode(), crc) & _MASK == want:
            return f"{head}{k}"
    raise AssertionError("unreachable")  # pragma: no cover


@functools.cache
def partitions(count: int) -> tuple[Partition, ...]:
    """The ``count`` partitions of a deployment, in order (computed once per count)."""
    if not 1 <= count <= MAX_PARTITIONS:
        raise ValueError(f"partitions must be between 1 and {MAX_PARTITIONS}, not {count}")
    return tuple(Partition(p, hash_tag(p, count)) for p in range(count))


def partition_of(key: str, count: int) -> Partition:
    """The partition an account or task lives in (stable across processes)."""
    return partitions(count)[zlib.crc32(key.encode("utf-8")) % count]


def tag(p: Partition) -> str:
    """``ledger:{<hash tag>}``: what every key of the partition starts with."""
    try:
        return f"{PREFIX}:{{{p.hash_tag}}}"
    except AttributeError:
        raise TypeError(
            f"a key needs a Partition (keys.partitions(count)[i], keys.partition_of), not {p!r}:"
            " its hash tag depends on the partition count"
        ) from None


def stream(p: Partition, level: Priority) -> str:
    return f"{tag(p)}:{LEVEL_NAMES[level]}"


def account(p: Partition, user_id: str) -> str:
    return f"{tag(p)}:acct:{user_id}"


def idempotency(p: Partition, user_id: str, key: str) -> str:
    """Length-prefixed: the user id and the key may both contain ":"."""
    return f"{tag(p)}:idem:{len(user_id)}:{user_id}:{key}"


def transactions(p: Partition, user_id: str) -> str:
    return f"{tag(p)}:txn:{user_id}"


def holds(p: Partition, user_id: str) -> str:
    """An account's open holds (hold id -> "credits|expires_at_ms|at_ms|reason")."""
    return f"{tag(p)}:holds:{user_id}"


def holds_due(p: Partition) -> str:
    """The partition's open holds by expiry time (ms)."""
    return f"{tag(p)}:holds-due"


def task(p: Partition, task_id: str) -> str:
    return f"{tag(p)}:task:{task_id}"


def done(p: Partition, width_ms: int, bucket: int, scale: int) -> str:
    """A family of done buckets (``streams.finished``): completed tasks' statuses of
    the ``bucket``-th span of ``width_ms`` since the epoch, spread over ``scale``
    hashes, ``done_part``."""
    return f"{tag(p)}:done:{width_ms}:{bucket}:{scale}"


def done_part(family: str, sub: int) -> str:
    """One hash of a family of done buckets (``done``)."""
    return f"{family}:{sub}"


def done_index(p: Partition) -> str:
    """The partition's families of done buckets (name -> when it may be dropped, ms)."""
    return f"{tag(p)}:done"


def attempts(p: Partition) -> str:
    return f"{tag(p)}:attempts"


def retry(p: Partition, group: str) -> str:
    return f"{tag(p)}:retry:{group}"


def scheduled(p: Partition) -> str:
    return f"{tag(p)}:scheduled"


def dead(p: Partition) -> str:
    return f"{tag(p)}:dead"


def stats(p: Partition) -> str:
    return f"{tag(p)}:stats"


def cursor(p: Partition) -> str:
    return f"{tag(p)}:cursor"


def deps(p: Partition, task_id: str) -> str:
    return f"{tag(p)}:deps:{task_id}"


def children(p: Partition, task_id: str) -> str:
    return f"{tag(p)}:children:{task_id}"


def waiting(p: Partition) -> str:
    return f"{tag(p)}:waiting"


def outbox(p: Partition) -> str:
    return f"{tag(p)}:outbox"


def parse_stream(key: str) -> tuple[Partition, Priority]:
    """(partition, level) of a stream key made by ``stream`` (ValueError: not one)."""
    prefix, tagged, level = key.split(":")
    m = _TAG_RE.fullmatch(tagged)
    if prefix != PREFIX or m is None or level not in LEVEL_BY_NAME:
        raise ValueError(f"not a stream key of this layout: {key!r}")
    return Partition(int(m.group(2)), m.group(1)), LEVEL_BY_NAME[level]


def latencies(p: Partition, queue: str) -> str:
    return f"{tag(p)}:lat:{queue}"


def throughput(p: Partition, queue: str) -> str:
    return f"{tag(p)}:tput:{queue}"


SCHEDULE_TAG = f"{PREFIX}:{{sched}}"
"""Every recurring schedule's keys share this hash tag (one Cluster slot)."""
SCHEDULES = f"{SCHEDULE_TAG}:schedules"
FIRING = f"{SCHEDULE_TAG}:firing"
SCHEDULE_STATS = f"{SCHEDULE_TAG}:schedule-stats"


def schedule(name: str) -> str:
    return f"{SCHEDULE_TAG}:schedule:{name}"


def firing(name: str) -> str:
    return f"{SCHEDULE_TAG}:firing:{name}"
