"""Credit holds in the read models, replay, audit and the statement.

Hold events are in each account's chain: the balances read model shows
``held`` and ``available``; replay reproduces the live views bit for bit; the
audit checks held amounts and open holds (Redis's and the fold's) and names
any edit; the statement shows holds, captures and releases with the running
balance and available credits.
"""

from __future__ import annotations

import io
import random
import time
from typing import Any

import pytest
from pymongo.database import Database

from ledger.errors import HoldNotOpen, InsufficientCredits
from ledger.tasks import Priority
from projections import audit as A
from projections.audit import AuditReport, audit
from projections.replay import replay
from projections.statement import COLUMNS, statement, write
from streams import QueueManager, keys
from streams.holds import expire_due

from .conftest import PARTITIONS, collection, entries_of, project, rewrite_stream, traffic


def hold_traffic(qm: QueueManager, users: int = 4, steps: int = 40, seed: int = 3) -> list[str]:
    """Accounts with purchases and uses (``traffic``), then holds captured in part,
    released, left open and expired, interleaved with spends."""
    names = traffic(qm, users=users, events=users * 4, seed=seed, prefix="h")
    rng = random.Random(seed)
    for name in names:
        qm.purchase(name, 1000, f"fund-{name}")
    open_: dict[str, list[str]] = {n: [] for n in names}
    for _ in range(steps):
        name = rng.choice(names)
        roll = rng.random()
        try:
            if roll < 0.4 or not open_[name]:
                h = qm.hold(name, rng.randint(1, 200), rng.choice([1, 600]), f"job {_}")
                open_[name].append(h.hold_id)
            elif roll < 0.6:
                qm.capture(name, open_[name].pop(0), rng.choice([None, 1]))
            elif roll < 0.75:
                qm.release(name, open_[name].pop(), priority=Priority.HIGH)
            else:
                qm.use(name, rng.randint(1, 50))
        except (InsufficientCredits, HoldNotOpen):
            pass
    return names


def expire_all(qm: QueueManager) -> int:
    time.sleep(1.05)  # the 1-second holds are due
    return expire_due(qm.redis, qm.appender, PARTITIONS)


def found(report: AuditReport) -> set[tuple[str, str]]:
    return {(m.user_id, m.what) for m in report.mismatches}


@pytest.fixture
def held(qm: QueueManager, mongo_db: Database[Any]) -> QueueManager:
    hold_traffic(qm)
    assert expire_all(qm) > 0
    project(qm, mongo_db)
    report = audit(qm.redis, PARTITIONS, mongo_db)
    assert report.ok, report.mismatches
    return qm


def test_balances_show_held_and_available(held: QueueManager, mongo_db: Database[Any]) -> None:
    for doc in mongo_db.balances.find():
        state = held.balance(doc["_id"])
        assert state is not None
        assert (doc["balance"], doc["held"], doc["available"]) == (
            state["balance"],
            state["held"],
            state["available"],
        )
        assert doc["held"] == sum(h.amount for h in held.open_holds(doc["_id"]))
    assert sum(d["held"] for d in mongo_db.balances.find()) > 0  # some holds stay open
    kinds = {d["kind"] for d in mongo_db.events.find()}
    assert {"credits_held", "hold_captured", "hold_released", "hold_expired"} <= kinds


def test_replay_reproduces_holds_bit_for_bit(held: QueueManager, mongo_db: Database[Any]) -> None:
    live = {name: collection(mongo_db, name) for name in ("balances", "credit_scores", "events")}
    mongo_db.balances.update_one({"_id": "h0"}, {"$set": {"held": 0, "available": 1}})
    replay(held.redis, PARTITIONS, mongo_db)
    again = {name: collection(mongo_db, name) for name in ("balances", "credit_scores", "events")}
    assert again == live


def test_audit_names_edited_holds(held: QueueManager, mongo_db: Database[Any]) -> None:
    user = next(u for u in ("h0", "h1", "h2", "h3") if held.open_holds(u))
    hold_id = held.open_holds(user)[0].hold_id
    p = keys.partition_of(user, PARTITIONS)
    r = held.redis
    # a hold's amount edited in the holds hash
    entry = r.hget(keys.holds(p, user), hold_id)
    assert isinstance(entry, bytes)
    r.hset(keys.holds(p, user), hold_id, b"1" + entry)
    assert (user, A.OPEN_HOLDS) in found(audit(r, PARTITIONS, mongo_db))
    r.hset(keys.holds(p, user), hold_id, entry)
    # the hold dropped from the due set: the scheduler would never release it
    r.zrem(keys.holds_due(p), hold_id)
    assert (user, A.OPEN_HOLDS) in found(audit(r, PARTITIONS, mongo_db))
    r.zadd(keys.holds_due(p), {hold_id: held.open_holds(user)[0].expires_at_ms})
    # the account's held total edited
    r.hincrby(keys.account(p, user), "held", -1)
    assert (user, A.STATE) in found(audit(r, PARTITIONS, mongo_db))
    r.hincrby(keys.account(p, user), "held", 1)
    assert audit(r, PARTITIONS, mongo_db).ok


def test_audit_names_an_edited_hold_event(held: QueueManager, mongo_db: Database[Any]) -> None:
    user = "h1"
    stream, eid, _ = next(e for e in entries_of(held.redis, user) if e[2][b"k"] == b"credits_held")

    def smaller(entry_id: str, f: dict[bytes, bytes]) -> dict[bytes, bytes]:
        if entry_id == eid:
            f = {**f, b"hd": str(int(f[b"hd"]) - 1).encode()}
        return f

    rewrite_stream(held.redis, stream, smaller)
    report = audit(held.redis, PARTITIONS, mongo_db, user=user)
    assert (user, A.CHAIN_BROKEN) in found(report) or (user, A.ARCHIVE_DIFFERS) in found(report)


def test_statement_shows_holds_with_running_balance_and_available(
    held: QueueManager, mongo_db: Database[Any]
) -> None:
    for user in ("h0", "h1", "h2", "h3"):
        rows = statement(held.redis, PARTITIONS, mongo_db, user)
        balance = held_total = 0
        for r in rows:
            balance += r["amount"]
            if r["kind"] == "credits_held":
                held_total += r["hold_amount"]
                assert r["amount"] == 0 and r["hold_id"] and r["expires_at"].endswith("Z")
            elif r["kind"] in ("hold_captured", "hold_released", "hold_expired"):
                held_total -= r["hold_amount"]
                assert r["released"] == r["hold_amount"] + min(r["amount"], 0)
            assert (r["balance"], r["held"], r["available"]) == (
                balance,
                held_total,
                balance - held_total,
            )
            assert r["available"] >= 0
        state = held.balance(user)
        assert state is not None and (rows[-1]["held"], rows[-1]["available"]) == (
            state["held"],
            state["available"],
        )
    out = io.StringIO()
    write(statement(held.redis, PARTITIONS, mongo_db, "h0"), "csv", out)
    assert out.getvalue().splitlines()[0] == ",".join(COLUMNS)
