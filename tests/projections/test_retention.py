"""Trimming removes only what every group has acknowledged (the archive included)."""

from __future__ import annotations

from typing import Any, cast

from pymongo.database import Database

from ledger.tasks import Priority
from projections.runner import all_projections, projector
from streams import QueueManager, keys
from streams.registry import EVENT_TASK_TYPES
from streams.replies import entries as stream_entries
from streams.retention import trim
from streams.retry import RetryPolicy

from .conftest import PARTITIONS


def stream_lengths(qm: QueueManager) -> int:
    return sum(
        qm.redis.xlen(keys.stream(p, lv))
        for p in keys.partitions(PARTITIONS)
        for lv in keys.LEVELS_DESC
    )


def test_trim_waits_for_every_group(qm: QueueManager, mongo_db: Database[Any]) -> None:
    qm.register_user("r", "r@example.com")
    for i in range(30):
        qm.purchase("r", 1, f"t{i}")
    # no archive group yet: nothing may go
    assert trim(qm.redis, PARTITIONS, keep_ms=0) == 0
    for task_type in EVENT_TASK_TYPES.values():  # the workers group just acknowledges
        qm.register_handler(task_type, lambda data, db: True)
    qm.worker()  # the workers group exists from the first entry on
    for projection in all_projections():
        projector(qm.redis, PARTITIONS, mongo_db, projection).run_until_idle()
    # the workers group has not read anything yet: still nothing
    assert trim(qm.redis, PARTITIONS, keep_ms=0) == 0
    # a worker takes 10 entries and dies with them pending
    p = keys.partition_of("r", PARTITIONS)
    stream = keys.stream(p, Priority.NORMAL)
    # a RESP2 client (the default): a list of [stream, entries] pairs
    taken = cast(list[list[Any]], qm.redis.xreadgroup("workers", "doomed", {stream: ">"}, count=10))
    first_pending = taken[0][1][0][0]
    assert trim(qm.redis, PARTITIONS, keep_ms=0) == 0  # the oldest pending is the first
    assert stream_entries(qm.redis, stream)[0][0] == first_pending
    # everything handled: all of it may go, the archive keeps it
    qm.worker(claim_idle_ms=0).run_until_idle()
    assert trim(qm.redis, PARTITIONS, keep_ms=60_000) == 0  # younger than the window
    assert trim(qm.redis, PARTITIONS, keep_ms=0) == 31
    assert stream_lengths(qm) == 0
    assert mongo_db.events.count_documents({"user_id": "r"}) == 31
    # new events keep flowing after a trim
    qm.purchase("r", 5, "after")
    projector(qm.redis, PARTITIONS, mongo_db, all_projections()[0]).run_until_idle()
    doc = mongo_db.balances.find_one({"_id": "r"})
    assert doc is not None and doc["balance"] == 35


def run_every_group(qm: QueueManager, db: Database[Any], archive_retry: RetryPolicy) -> None:
    qm.worker().run_until_idle()
    for projection in all_projections():
        projector(
            qm.redis,
            PARTITIONS,
            db,
            projection,
            retry=archive_retry if projection.name == "events" else None,
        ).run_until_idle()


def test_an_event_the_archive_dead_lettered_is_never_trimmed(
    qm: QueueManager, mongo_db: Database[Any]
) -> None:
    """The archive projector fails to store r:3 for good (a unique index of the
    operator's clashes with it), dead-letters it and so acknowledges it. Trimming
    stops right before it until it is requeued and archived; poison holds nothing."""
    for task_type in EVENT_TASK_TYPES.values():
        qm.register_handler(task_type, lambda data, db: True)
    qm.register_user("r", "r@example.com")
    for i in range(5):
        qm.purchase("r", 1, f"t{i}")
    stream = keys.stream(keys.partition_of("r", PARTITIONS), Priority.NORMAL)
    ids = [eid.decode() for eid, _ in stream_entries(qm.redis, stream)]
    mongo_db.events.create_index("entry_id", unique=True)
    mongo_db.events.insert_one({"_id": "squatter", "entry_id": ids[2]})
    quick = RetryPolicy(max_attempts=2, base_ms=1, max_ms=5)
    run_every_group(qm, mongo_db, quick)
    [dead] = qm.dead_letters()
    assert (dead.group, dead.original_id, dead.user_id) == ("proj:events", ids[2], "r")
    assert mongo_db.events.find_one({"_id": "r:3"}) is None

    assert trim(qm.redis, PARTITIONS, keep_ms=0) == 2
    assert [eid.decode() for eid, _ in stream_entries(qm.redis, stream)] == ids[2:]
    assert trim(qm.redis, PARTITIONS, keep_ms=0) == 0

    # poison the archive dead-letters too is not an event: it holds nothing back
    qm.redis.xadd(keys.stream(keys.partition_of("r", PARTITIONS), Priority.LOW), {"k": "garbage"})
    run_every_group(qm, mongo_db, quick)
    assert trim(qm.redis, PARTITIONS, keep_ms=0) == 1
    assert [eid.decode() for eid, _ in stream_entries(qm.redis, stream)] == ids[2:]

    # requeued once the clash is gone: archived, and the stream may go
    mongo_db.events.delete_one({"_id": "squatter"})
    qm.requeue(dead.id)
    run_every_group(qm, mongo_db, quick)
    assert mongo_db.events.count_documents({"user_id": "r"}) == 6
    assert trim(qm.redis, PARTITIONS, keep_ms=0) == 5
    assert stream_lengths(qm) == 0
