"""Credit holds on a real Redis: reserve, capture (all or part), release, expiry.

The append script decides every hold event atomically: ``available = balance -
held`` bounds holds, uses and negative adjustments; a hold closes exactly once
whatever races it; the events are in the account's hash chain.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from ledger.accounts import fold
from ledger.chain import verify
from ledger.commands import Capture, Expire, Hold, Release, Use
from ledger.errors import (
    HoldNotDue,
    HoldNotOpen,
    IdempotencyKeyReused,
    InsufficientCredits,
    LedgerError,
    TooManyHolds,
    UnknownAccount,
    UnknownHold,
    ValidationError,
)
from ledger.events import CreditsHeld, HoldCaptured, HoldExpired, HoldReleased
from ledger.tasks import Priority
from streams import HandlerRegistry, QueueManager, StreamsConfig, keys
from streams.appender import Appended
from streams.holds import ExpiryStats, expire_due, pending_holds
from streams.scheduler import Scheduler
from tests.streamlog import account_histories

from .conftest import PARTITIONS


def funded(qm: QueueManager, user: str, credits: int = 100) -> None:
    qm.register_user(user, f"{user}@example.com")
    qm.purchase(user, credits, f"tx-{user}")


def test_hold_then_partial_capture_then_release(qm: QueueManager) -> None:
    funded(qm, "ann")
    h = qm.hold("ann", 60, 300, "job 1")
    assert (h.hold_id, h.version, h.balance, h.held, h.available) == ("ann:h1", 3, 100, 60, 40)
    with pytest.raises(InsufficientCredits) as refused:
        qm.use("ann", 41)
    assert (refused.value.balance, refused.value.available) == (100, 40)
    with pytest.raises(InsufficientCredits):
        qm.adjust("ann", -41, "fee")
    with pytest.raises(InsufficientCredits):
        qm.hold("ann", 41, 300)
    h2 = qm.hold("ann", 40, 300, "job 2")
    assert (h2.hold_id, h2.held, h2.available) == ("ann:h2", 100, 0)
    c = qm.capture("ann", "ann:h1", 25)
    assert (c.hold_id, c.balance, c.held, c.available) == ("ann:h1", 75, 40, 35)
    r = qm.release("ann", "ann:h2")
    assert (r.balance, r.held, r.available) == (75, 0, 75)
    assert qm.balance("ann")["held"] == 0  # type: ignore[index]
    events = account_histories(qm.redis, PARTITIONS)["ann"]
    assert [type(e) for e in events[2:]] == [CreditsHeld, CreditsHeld, HoldCaptured, HoldReleased]
    captured = events[4]
    assert isinstance(captured, HoldCaptured) and captured.released == 35
    assert verify(events) is None
    account = fold(events)
    assert account is not None and account.holds == {} and account.totals.used == 25
    assert (account.totals.balance, account.totals.held) == (75, 0)


def test_capture_all_by_default_and_a_closed_hold_is_not_open(qm: QueueManager) -> None:
    funded(qm, "bo")
    h = qm.hold("bo", 30, 60)
    assert qm.capture("bo", h.hold_id).balance == 70
    with pytest.raises(HoldNotOpen):
        qm.capture("bo", h.hold_id)
    with pytest.raises(HoldNotOpen):
        qm.release("bo", h.hold_id)
    with pytest.raises(ValidationError) as over:
        qm.capture("bo", qm.hold("bo", 5, 60).hold_id, 6)
    assert over.value.field == "amount"


def test_unknown_holds_and_holds_of_another_account(qm: QueueManager) -> None:
    funded(qm, "cy")
    funded(qm, "di")
    mine = qm.hold("di", 10, 60).hold_id
    for hold_id in ("cy:h1", "cy:h99", mine, "cy:h1000000000000000"):
        with pytest.raises((UnknownHold, ValidationError)):
            qm.capture("cy", hold_id)
    with pytest.raises(UnknownHold):
        qm.release("cy", mine)
    with pytest.raises(UnknownAccount):
        qm.release("nobody", "nobody:h1")
    assert qm.balance("di")["held"] == 10  # type: ignore[index]


def test_idempotent_hold_and_capture_return_the_first_response(qm: QueueManager) -> None:
    funded(qm, "ed")
    first = qm.hold("ed", 10, 60, "x", idempotency_key="k-hold")
    again = qm.hold("ed", 10, 60, "x", idempotency_key="k-hold")
    assert again.duplicate and (again.event_id, again.hold_id, again.held) == (
        first.event_id,
        first.hold_id,
        first.held,
    )
    with pytest.raises(IdempotencyKeyReused):
        qm.hold("ed", 10, 61, "x", idempotency_key="k-hold")  # another expiry: another request
    cap = qm.capture("ed", first.hold_id, 4, idempotency_key="k-cap")
    rep = qm.capture("ed", first.hold_id, 4, idempotency_key="k-cap")
    assert rep.duplicate and (rep.event_id, rep.balance, rep.held) == (
        cap.event_id,
        cap.balance,
        cap.held,
    )
    assert qm.balance("ed")["version"] == 4  # type: ignore[index]


def test_limits_open_holds_and_expiry(redis_url: str, qm: QueueManager) -> None:
    small = QueueManager(
        config=StreamsConfig(
            redis_url=redis_url, partitions=PARTITIONS, max_open_holds=2, max_hold_expiry_s=60
        ),
        client=qm.redis,
    )
    funded(small, "fi")
    small.hold("fi", 1, 60)
    small.hold("fi", 1, 1)
    with pytest.raises(TooManyHolds) as too_many:
        small.hold("fi", 1, 60)
    assert too_many.value.limit == 2
    with pytest.raises(ValidationError) as too_long:
        small.hold("fi", 1, 61)
    assert too_long.value.field == "expires_in_s"
    small.release("fi", "fi:h1")
    assert small.hold("fi", 1, 60).hold_id == "fi:h3"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"amount": 0}, "amount"),
        ({"amount": -5}, "amount"),
        ({"amount": 2**53}, "amount"),
        ({"amount": 1.5}, "amount"),
        ({"amount": "5"}, "amount"),
        ({"amount": True}, "amount"),
        ({"expires_in_s": 0}, "expires_in_s"),
        ({"expires_in_s": -1}, "expires_in_s"),
        ({"expires_in_s": 1.0}, "expires_in_s"),
        ({"expires_in_s": "60"}, "expires_in_s"),
        ({"expires_in_s": 10**12}, "expires_in_s"),
        ({"reason": "x" * 501}, "reason"),
        ({"reason": "a\x1fb"}, "reason"),
    ],
)
def test_hostile_hold_fields(kwargs: dict[str, object], field: str) -> None:
    body: dict[str, object] = {"user_id": "u", "amount": 5, "expires_in_s": 60, **kwargs}
    with pytest.raises(ValidationError) as bad:
        Hold(**body)  # type: ignore[arg-type]
    assert bad.value.field == field


@pytest.mark.parametrize("hold_id", ["", "h1", "u:h0", "u:h01", "u:x1", "u:h1$", "$gt", 5, None])
def test_hostile_hold_ids(hold_id: object) -> None:
    with pytest.raises(ValidationError) as bad:
        Capture(user_id="u", hold_id=hold_id)  # type: ignore[arg-type]
    assert bad.value.field == "hold_id"


def test_concurrent_holds_and_spends_never_overdraw(qm: QueueManager) -> None:
    funded(qm, "gus", 100)

    def one(i: int) -> Appended | LedgerError:
        try:
            if i % 3 == 0:
                return qm.hold("gus", 7, 60)
            if i % 3 == 1:
                return qm.use("gus", 5)
            return qm.adjust("gus", -3, "fee")
        except LedgerError as exc:
            return exc

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(60)))
    assert any(isinstance(r, InsufficientCredits) for r in results)
    events = account_histories(qm.redis, PARTITIONS)["gus"]
    account = fold(events)  # checks available >= 0 and held == sum(open) at every version
    assert account is not None
    assert account.totals.held == sum(h.credits for h in account.holds.values())
    assert 0 <= account.totals.available < 7
    state = qm.balance("gus")
    assert state is not None and (state["balance"], state["held"]) == (
        account.totals.balance,
        account.totals.held,
    )


def test_expiry_releases_once_and_races_capture(qm: QueueManager) -> None:
    funded(qm, "hal")
    h = qm.hold("hal", 20, 1)
    with pytest.raises(HoldNotDue):
        qm.append(Expire(user_id="hal", hold_id=h.hold_id))
    assert expire_due(qm.redis, qm.appender, PARTITIONS) == 0  # not due yet
    time.sleep(1.05)
    with pytest.raises(HoldNotOpen):  # past its expiry: no longer capturable
        qm.capture("hal", h.hold_id)
    stats = [ExpiryStats() for _ in range(3)]
    barrier = threading.Barrier(3)

    def sweep(s: ExpiryStats) -> int:
        barrier.wait()
        return expire_due(qm.redis, qm.appender, PARTITIONS, stats=s)

    with ThreadPoolExecutor(3) as pool:
        assert sum(pool.map(sweep, stats)) == 1
    events = account_histories(qm.redis, PARTITIONS)["hal"]
    assert sum(isinstance(e, HoldExpired) for e in events) == 1
    assert qm.balance("hal")["held"] == 0  # type: ignore[index]
    assert pending_holds(qm.redis, PARTITIONS) == 0
    with pytest.raises(HoldNotOpen):
        qm.release("hal", h.hold_id)


def test_capture_and_expiry_at_the_deadline_have_one_winner(qm: QueueManager) -> None:
    funded(qm, "ivy", 1000)
    holds = [qm.hold("ivy", 10, 1).hold_id for _ in range(20)]
    time.sleep(0.9)
    deadline = time.monotonic() + 0.3
    captured: list[str] = []

    def capture_all() -> None:
        while time.monotonic() < deadline and len(captured) < len(holds):
            for hold_id in holds:
                if hold_id in captured:
                    continue
                try:
                    qm.capture("ivy", hold_id)
                    captured.append(hold_id)
                except HoldNotOpen:
                    pass

    t = threading.Thread(target=capture_all)
    t.start()
    expired = 0
    while time.monotonic() < deadline + 0.2:
        expired += expire_due(qm.redis, qm.appender, PARTITIONS)
    t.join()
    assert len(captured) + expired == len(holds)
    events = account_histories(qm.redis, PARTITIONS)["ivy"]
    closes = [e.ref for e in events if isinstance(e, HoldCaptured | HoldExpired)]
    assert sorted(closes) == sorted(holds)  # each closed exactly once
    account = fold(events)
    assert account is not None and account.holds == {} and account.totals.held == 0


def test_the_scheduler_expires_holds(qm: QueueManager) -> None:
    funded(qm, "jo")
    qm.hold("jo", 5, 1)
    scheduler = Scheduler(qm.redis, PARTITIONS, config=qm.config, interval_ms=20)
    t = threading.Thread(target=scheduler.run)
    t.start()
    try:
        deadline = time.monotonic() + 5
        while qm.balance("jo")["held"] and time.monotonic() < deadline:  # type: ignore[index]
            time.sleep(0.05)
    finally:
        scheduler.stop()
        t.join()
    assert qm.balance("jo")["held"] == 0  # type: ignore[index]
    assert scheduler.holds_expired == 1


def test_open_holds_lists_them_oldest_first(qm: QueueManager) -> None:
    funded(qm, "kim")
    a = qm.hold("kim", 3, 60, "first")
    b = qm.hold("kim", 4, 120, "second ✓")
    qm.hold("kim", 5, 60)
    qm.release("kim", "kim:h3")
    listed = qm.open_holds("kim")
    assert [(h.hold_id, h.amount, h.reason) for h in listed] == [
        (a.hold_id, 3, "first"),
        (b.hold_id, 4, "second ✓"),
    ]
    assert listed[1].expires_at_ms - listed[1].created_at_ms == 120_000
    assert qm.open_holds("nobody") == []


def test_batched_holds_in_one_call(qm: QueueManager) -> None:
    funded(qm, "lu", 50)
    results = qm.append_batch(
        [(Hold(user_id="lu", amount=20, expires_in_s=60), Priority.NORMAL, None)] * 3
        + [
            (Capture(user_id="lu", hold_id="lu:h1", amount=5), Priority.NORMAL, None),
            (Release(user_id="lu", hold_id="lu:h2"), Priority.NORMAL, None),
            (Use(user_id="lu", amount=46), Priority.NORMAL, None),  # 45 left
        ]
    )
    assert [type(r).__name__ for r in results] == [
        "Appended",
        "Appended",
        "InsufficientCredits",
        "Appended",
        "Appended",
        "InsufficientCredits",
    ]
    assert [r.hold_id for r in results if isinstance(r, Appended)] == [
        "lu:h1",
        "lu:h2",
        "lu:h1",
        "lu:h2",
    ]
    events = account_histories(qm.redis, PARTITIONS)["lu"]
    assert verify(events) is None and fold(events) is not None
    p = keys.partition_of("lu", PARTITIONS)
    assert qm.redis.zcard(keys.holds_due(p)) == 0


def test_hold_events_reach_handlers_and_the_original_collections(
    qm: QueueManager, registry: HandlerRegistry, make_worker: Callable[..., Any], mongo_db: Any
) -> None:
    seen: list[dict[str, Any]] = []

    def on_hold(data: Mapping[str, Any], db_manager: Any) -> bool:
        seen.append(dict(data))
        return True

    qm.register_handler("credit_hold", on_hold)
    funded(qm, "max")
    a = qm.hold("max", 30, 60, "render")
    qm.capture("max", a.hold_id, 12)
    b = qm.hold("max", 5, 60)
    qm.release("max", b.hold_id)
    assert make_worker().run_until_idle() == 6
    assert [(d["hold_id"], d["amount"], d["reason"]) for d in seen] == [
        ("max:h1", 30, "render"),
        ("max:h2", 5, ""),
    ]
    assert seen[0]["held_total"] == 30 and seen[0]["available_after"] == 70
    captured = mongo_db.credit_usage.find_one({"_id": "max:4"})
    assert captured is not None
    assert (captured["kind"], captured["amount"], captured["released"]) == ("hold_captured", 12, 18)
    released = mongo_db.credit_holds.find_one({"_id": "max:6"})
    assert released is not None and (released["hold_id"], released["released"]) == ("max:h2", 5)
