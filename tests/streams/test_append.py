"""The atomic append: overdraft, idempotency, versions, chain — on a real Redis."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from ledger.chain import verify
from ledger.commands import Purchase, RegisterUser, Use
from ledger.errors import (
    DuplicateUser,
    IdempotencyKeyReused,
    InsufficientCredits,
    LimitExceeded,
    TransactionReused,
    UnknownAccount,
    ValidationError,
)
from ledger.money import MAX_CREDITS
from ledger.tasks import Priority
from streams import ConfigError, QueueManager, RetryPolicy, StreamsConfig, keys
from streams.connection import connect, ensure_partitions
from tests.streamlog import account_histories, iter_entries

from .conftest import PARTITIONS


def log_size(qm: QueueManager) -> int:
    return sum(1 for _ in iter_entries(qm.redis, PARTITIONS))


def test_events_carry_version_totals_and_chain(qm: QueueManager) -> None:
    assert qm.register_user("alice", "alice@example.com").version == 1
    bought = qm.purchase("alice", 500, "tx-1")
    used = qm.use("alice", 120, "report")
    adjusted = qm.adjust("alice", -30, "fee")
    assert (bought.version, used.version, adjusted.version) == (2, 3, 4)
    assert (bought.balance, used.balance, adjusted.balance) == (500, 380, 350)
    assert adjusted.event_id == "alice:4"
    events = account_histories(qm.redis, PARTITIONS)["alice"]
    assert [e.version for e in events] == [1, 2, 3, 4]
    assert verify(events) is None
    last = events[-1].after
    assert (last.balance, last.purchased, last.used) == (350, 500, 120)
    assert qm.balance("alice") == {
        "user_id": "alice",
        "version": 4,
        "balance": 350,
        "held": 0,
        "available": 350,
        "purchased_total": 500,
        "used_total": 120,
        "head": events[-1].hash,
    }


def test_long_texts_hash_like_the_python_chain(qm: QueueManager) -> None:
    """Texts longer than append.lua's table of "<len>:" prefixes (multi-byte too)."""
    email = "e" * 60 + "@" + "d" * 60 + ".example.com"
    qm.register_user("long", email)
    qm.purchase("long", 900, "t" * 64)
    qm.use("long", 10, "é" * 500)  # 1,000 bytes
    qm.adjust("long", 5, "r" * 65)
    events = account_histories(qm.redis, PARTITIONS)["long"]
    assert [e.version for e in events] == [1, 2, 3, 4]
    assert verify(events) is None
    assert qm.balance("long")["balance"] == 895  # type: ignore[index]


def test_a_malformed_event_argument_runs_nothing_from_it_on(qm: QueueManager) -> None:
    """Each event is one argument, fields joined by \\x1f; one not so shaped
    leaves the keys of the later ones unknown: none of them runs."""
    qm.register_user("mal", "mal@example.com")
    p = keys.partition_of("mal", PARTITIONS)
    acct, stream = keys.account(p, "mal"), keys.stream(p, Priority.NORMAL)
    good = "\x1f".join(("credits_adjusted", "mal", "5", "fix", "", "0"))
    replies = qm.scripts.append(
        keys=[stream, acct, acct, acct], args=[60, MAX_CREDITS, "q", 100, good, "bad", good]
    )
    assert replies == [[b"ok", b"2", b"5", b"0"], [b"malformed"], [b"malformed"]]
    assert qm.balance("mal")["balance"] == 5  # type: ignore[index]


def test_overdraft_is_refused_and_appends_nothing(qm: QueueManager) -> None:
    qm.register_user("bob", "bob@example.com")
    qm.purchase("bob", 100, "tx-1")
    before = log_size(qm)
    with pytest.raises(InsufficientCredits) as refused:
        qm.use("bob", 101)
    assert refused.value.balance == 100 and refused.value.requested == 101
    with pytest.raises(InsufficientCredits):
        qm.adjust("bob", -101, "too much")
    assert log_size(qm) == before
    assert qm.balance("bob")["balance"] == 100  # type: ignore[index]
    assert qm.use("bob", 100).balance == 0


def test_unknown_and_duplicate_accounts(qm: QueueManager) -> None:
    with pytest.raises(UnknownAccount):
        qm.purchase("ghost", 10, "tx-1")
    qm.register_user("carol", "carol@example.com")
    with pytest.raises(DuplicateUser):
        qm.register_user("carol", "other@example.com")
    assert log_size(qm) == 1


def test_idempotency_key_returns_the_first_response(qm: QueueManager) -> None:
    qm.register_user("dave", "dave@example.com")
    first = qm.purchase("dave", 50, "tx-1", idempotency_key="k-1")
    again = qm.purchase("dave", 50, "tx-1", idempotency_key="k-1")
    assert again.duplicate and not first.duplicate
    assert (again.event_id, again.version, again.balance) == (first.event_id, 2, 50)
    use = qm.use("dave", 10, idempotency_key="k-2")
    qm.purchase("dave", 5, "tx-2")
    repeat = qm.use("dave", 10, idempotency_key="k-2")
    assert (repeat.event_id, repeat.balance) == (use.event_id, use.balance)
    with pytest.raises(IdempotencyKeyReused):
        qm.use("dave", 11, idempotency_key="k-2")
    assert log_size(qm) == 4


def test_transaction_id_is_recorded_once(qm: QueueManager) -> None:
    qm.register_user("erin", "erin@example.com")
    first = qm.purchase("erin", 70, "pay-123")
    assert qm.purchase("erin", 70, "pay-123").event_id == first.event_id
    with pytest.raises(TransactionReused):
        qm.purchase("erin", 71, "pay-123")
    assert qm.balance("erin")["balance"] == 70  # type: ignore[index]


def test_totals_stay_exact_up_to_the_limit(qm: QueueManager) -> None:
    qm.register_user("rich", "rich@example.com")
    assert qm.purchase("rich", MAX_CREDITS - 1, "tx-1").balance == MAX_CREDITS - 1
    assert qm.purchase("rich", 1, "tx-2").balance == MAX_CREDITS
    with pytest.raises(LimitExceeded):
        qm.purchase("rich", 1, "tx-3")
    assert qm.use("rich", MAX_CREDITS - 2).balance == 2


def test_concurrent_spends_never_overdraw(qm: QueueManager, redis_url: str) -> None:
    qm.register_user("frank", "frank@example.com")
    qm.purchase("frank", 1000, "tx-1")
    barrier = threading.Barrier(16)

    def spend(i: int) -> bool:
        manager = QueueManager(config=qm.config, client=connect(redis_url))
        try:
            barrier.wait() if i < 16 else None
            manager.use("frank", 30, f"spend {i}")
            return True
        except InsufficientCredits:
            return False
        finally:
            manager.close()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(spend, range(60)))
    assert sum(results) == 33  # exactly the affordable ones: 33 * 30 = 990
    assert qm.balance("frank")["balance"] == 10  # type: ignore[index]
    events = account_histories(qm.redis, PARTITIONS)["frank"]
    assert len(events) == 2 + 33 and verify(events) is None
    assert min(e.after.balance for e in events) >= 0


def test_concurrent_repeats_of_one_key_make_one_event(qm: QueueManager, redis_url: str) -> None:
    qm.register_user("gina", "gina@example.com")
    barrier = threading.Barrier(20)

    def buy(_: int) -> str:
        manager = QueueManager(config=qm.config, client=connect(redis_url))
        try:
            barrier.wait()
            return manager.purchase("gina", 25, "tx-same", idempotency_key="same-key").event_id
        finally:
            manager.close()

    with ThreadPoolExecutor(20) as pool:
        ids = set(pool.map(buy, range(20)))
    assert ids == {"gina:2"}
    assert qm.balance("gina")["balance"] == 25  # type: ignore[index]
    assert log_size(qm) == 2


def test_batch_gives_one_result_per_item(qm: QueueManager) -> None:
    qm.register_user("hank", "hank@example.com")
    results = qm.append_batch(
        [
            (
                Purchase(user_id="hank", amount=10, currency="USD", transaction_id="a"),
                Priority.HIGH,
                None,
            ),
            (Use(user_id="hank", amount=50, reason=""), Priority.HIGH, None),
            (Use(user_id="hank", amount=4, reason=""), Priority.LOW, None),
            (RegisterUser(user_id="hank", email="h@example.com"), Priority.NORMAL, None),
        ]
    )
    assert [type(r).__name__ for r in results] == [
        "Appended",
        "InsufficientCredits",
        "Appended",
        "DuplicateUser",
    ]
    assert qm.balance("hank")["balance"] == 6  # type: ignore[index]
    # events of one account may sit in different priority streams; versions stay dense
    p = keys.partition_of("hank", PARTITIONS)
    assert qm.redis.xlen(keys.stream(p, Priority.LOW)) == 1


HASH_TAG = "{" + keys.partitions(PARTITIONS)[0].hash_tag + "}"
"""A user id shaped like a partition's hash tag, braces and all."""


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda qm: qm.register_user("a b", "x@example.com"), "user_id"),
        (lambda qm: qm.register_user(HASH_TAG, "x@example.com"), "user_id"),
        (lambda qm: qm.register_user("u" * 129, "x@example.com"), "user_id"),
        (lambda qm: qm.register_user("ok", "not-an-email"), "email"),
        (lambda qm: qm.purchase("ok", 10.0, "tx"), "amount"),
        (lambda qm: qm.purchase("ok", True, "tx"), "amount"),
        (lambda qm: qm.purchase("ok", -5, "tx"), "amount"),
        (lambda qm: qm.purchase("ok", 0, "tx"), "amount"),
        (lambda qm: qm.purchase("ok", 2**63, "tx"), "amount"),
        (lambda qm: qm.purchase("ok", "10", "tx"), "amount"),
        (lambda qm: qm.purchase("ok", 10, "tx with space"), "transaction_id"),
        (lambda qm: qm.purchase("ok", 10, "tx", currency="usd"), "currency"),
        (lambda qm: qm.use("ok", 5, "bad\x00reason"), "reason"),
        (lambda qm: qm.use("ok", 5, "r" * 501), "reason"),
        (lambda qm: qm.adjust("ok", 0, "zero"), "delta"),
        (lambda qm: qm.adjust("ok", 5, ""), "reason"),
        (lambda qm: qm.use("ok", 5, idempotency_key="has space"), "Idempotency-Key"),
        (lambda qm: qm.use("ok", 5, idempotency_key=""), "Idempotency-Key"),
        (lambda qm: qm.use("ok", 5, priority=7), "priority"),
    ],
)
def test_hostile_input_is_refused_and_appends_nothing(qm: QueueManager, call, field) -> None:  # type: ignore[no-untyped-def]
    qm.register_user("ok", "ok@example.com")
    qm.purchase("ok", 100, "tx-0")
    with pytest.raises(ValidationError) as err:
        call(qm)
    assert err.value.field == field
    assert log_size(qm) == 2
    assert qm.balance("ok")["balance"] == 100  # type: ignore[index]


def test_partition_count_cannot_change(qm: QueueManager, redis_url: str) -> None:
    qm.register_user("ivy", "ivy@example.com")
    other = QueueManager(config=StreamsConfig(redis_url=redis_url, partitions=PARTITIONS + 1))
    try:
        with pytest.raises(ConfigError):
            other.register_user("jon", "jon@example.com")
    finally:
        other.close()
    ensure_partitions(qm.redis, PARTITIONS)  # the configured count is still accepted


def test_scripts_reload_after_the_server_forgets_them(qm: QueueManager) -> None:
    """After a Redis restart (here: SCRIPT FLUSH) pipelined calls load the script again."""
    qm.register_user("sam", "sam@example.com")
    qm.redis.script_flush()
    assert qm.purchase("sam", 5, "tx-1").balance == 5
    qm.redis.script_flush()
    results = qm.append_batch(
        [
            (Use(user_id="sam", amount=2, reason=""), Priority.NORMAL, None),
            (RegisterUser(user_id="tom", email="t@example.com"), Priority.NORMAL, None),
        ]
    )
    assert [r.version for r in results] == [3, 1]  # type: ignore[union-attr]
    qm.redis.script_flush()
    qm.worker(retry=RetryPolicy(max_attempts=1)).step()  # reclaim, begin, settle reload too
    assert log_size(qm) == 4


@pytest.mark.parametrize(
    "bad",
    [
        ("not a command", Priority.NORMAL, None),
        (Use(user_id="u0", amount=1, reason=""), Priority.NORMAL, "bad key with spaces"),
    ],
)
def test_a_bad_item_late_in_a_batch_appends_nothing(qm: QueueManager, bad: object) -> None:
    """Calls stream out as they fill, so every item is checked before the first goes."""
    qm.register_user("warm", "warm@example.com")  # the script is loaded: calls would run
    users = [f"u{i}" for i in range(100)]
    items: list[object] = [
        (RegisterUser(user_id=u, email=f"{u}@example.com"), Priority.NORMAL, None) for u in users
    ]
    items.insert(90, bad)
    with pytest.raises(ValidationError):
        qm.appender.append_many(items)  # type: ignore[arg-type]
    assert (
        sum(
            qm.redis.xlen(keys.stream(p, lv))
            for p in keys.partitions(PARTITIONS)
            for lv in keys.LEVELS_DESC
        )
        == 1
    )
