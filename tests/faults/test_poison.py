"""Poison put straight into the streams (undecodable bytes, unknown event kinds,
broken numbers, undecodable task data): every consumer group
dead-letters it with an error and goes on; nothing stalls, nothing good is lost."""

from __future__ import annotations

from typing import Any

import pytest
import redis as redis_py
from pymongo.database import Database
from redis.typing import EncodableT, FieldT

from ledger.accounts import fold
from ledger.events import Event
from ledger.tasks import Priority, allowed_collections
from projections.runner import all_projections, group_of, projector
from projections.store import MongoDBManager
from streams import HandlerRegistry, QueueManager, StreamsConfig, keys
from streams.codec import decode_event, pack
from streams.connection import connect
from streams.replies import entries as stream_entries
from streams.replies import text

from . import handlers
from .conftest import PARTITIONS

GOOD_EVENT: dict[FieldT, EncodableT] = {
    "k": "credits_purchased",
    "u": "victim",
    "v": "1",
    "t": "1",
    "a": "5",
    "b": "5",
    "p": "5",
    "x": "0",
    "tx": "USD",
    "r": "t",
    "ph": "",
    "h": "00",
    "q": "default",
}
POISON: dict[str, dict[FieldT, EncodableT]] = {
    "undecodable bytes": {b"k": b"\xff\xfe\x00", b"u": b"\x80\x81", b"\xff": b"\xfe"},
    "no fields we know": {"hello": "world"},
    "unknown event kind": {**GOOD_EVENT, "k": "credits_stolen"},
    "version not a number": {**GOOD_EVENT, "v": "one"},
    "balance not a number": {**GOOD_EVENT, "b": "1e400"},
    "task data not msgpack": {
        "k": "task",
        "id": "poison-1",
        "q": "default",
        "ty": "fault_task",
        "d": b"\xc1\xc1\xc1",
        "t": "1",
    },
    "task data not a map": {
        "k": "task",
        "id": "poison-2",
        "q": "default",
        "ty": "fault_task",
        "d": pack([1, 2]),  # type: ignore[arg-type]  # the poison: a list, not a map
        "t": "1",
    },
}


def test_poison_goes_to_the_dead_letters_and_nothing_stalls(
    redis: redis_py.Redis, redis_url: str, mongo_db: Database[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    registry = HandlerRegistry()
    registry.register("fault_task", handlers.fault_task)
    qm = QueueManager(
        config=StreamsConfig(redis_url=redis_url, partitions=PARTITIONS),
        client=connect(redis_url),
        registry=registry,
        db=MongoDBManager(mongo_db, allowed_collections(())),
    )
    try:
        users = ["alice", "bob", "carol"]
        for u in users:
            qm.register_user(u, f"{u}@example.com")
        # consumers exist before the poison arrives, as in production
        worker = qm.worker(claim_idle_ms=100, reclaim_every_ms=20)
        projectors = [
            projector(qm.redis, PARTITIONS, mongo_db, p, claim_idle_ms=100, reclaim_every_ms=20)
            for p in all_projections()
        ]
        poisoned: dict[tuple[str, str], str] = {}
        for p in keys.partitions(PARTITIONS):
            for level in keys.LEVELS_DESC:
                stream = keys.stream(p, level)
                for name, fields in POISON.items():
                    poisoned[(stream, text(redis.xadd(stream, fields)))] = name
                for u in users:  # good traffic behind the poison, on every stream
                    qm.purchase(u, 10, f"{u}-{p}-{int(level)}", priority=Priority(level))
        good_tasks = [qm.enqueue("default", "fault_task", {"ref": f"good-{i}"}) for i in range(5)]

        worker.run_until_idle(timeout=60)
        for w in projectors:
            w.run_until_idle(timeout=60)

        dead = qm.dead_letters(limit=100_000)
        by_group: dict[str, set[tuple[str, str]]] = {}
        for d in dead:
            assert d.error, d
            by_group.setdefault(d.group, set()).add((d.stream, d.original_id))
        # the task workers dead-letter every poison entry and nothing else
        assert by_group.get("workers") == set(poisoned), {
            poisoned.get(k, k) for k in set(poisoned) ^ by_group.get("workers", set())
        }
        # the projectors dead-letter what they cannot read, never a good event
        for proj in all_projections():
            assert by_group.get(group_of(proj), set()) <= set(poisoned)
        # nothing left pending anywhere
        for p in keys.partitions(PARTITIONS):
            for level in keys.LEVELS_DESC:
                for group in ("workers", *(group_of(pr) for pr in all_projections())):
                    assert redis.xpending(keys.stream(p, level), group)["pending"] == 0
        # everything good behind the poison took effect
        for t in good_tasks:
            assert qm.get_task_status(t)["status"] == "completed"  # type: ignore[index]
        assert mongo_db[handlers.COLLECTION].count_documents({}) == len(good_tasks)
        streams = PARTITIONS * len(keys.LEVELS_DESC)
        for u in users:
            account = fold(good_events(qm, u))
            assert account is not None
            doc = mongo_db.balances.find_one({"_id": u})
            assert doc is not None and (doc["version"], doc["balance"]) == (
                account.version,
                account.totals.balance,
            ) == (1 + streams, 10 * streams)
        assert mongo_db.balances.find_one({"_id": "victim"}) is None
    finally:
        qm.close()


def good_events(qm: QueueManager, user: str) -> list[Event]:
    """``user``'s events, in version order (no poison entry names a real user)."""
    p = keys.partition_of(user, PARTITIONS)
    events = [
        decode_event(fields)
        for level in keys.LEVELS_DESC
        for _, fields in stream_entries(qm.redis, keys.stream(p, level))
        if fields.get(b"u") == user.encode() and fields.get(b"k") != b"task"
    ]
    return sorted(events, key=lambda e: e.version)
