"""Trimming removes only what every group has acknowledged (the archive included)."""

from __future__ import annotations

from typing import Any

from pymongo.database import Database

from ledger.tasks import Priority
from projections.runner import all_projections, projector
from streams import QueueManager, keys
from streams.registry import EVENT_TASK_TYPES
from streams.retention import trim

from .conftest import PARTITIONS


def stream_lengths(qm: QueueManager) -> int:
    return sum(qm.redis.xlen(keys.stream(p, lv))
               for p in range(PARTITIONS) for lv in keys.LEVELS_DESC)


def test_trim_waits_for_every_group(qm: QueueManager,
                                    mongo_db: Database[Any]) -> None:
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
    taken = qm.redis.xreadgroup("workers", "doomed", {stream: ">"}, count=10)
    first_pending = taken[0][1][0][0]
    assert trim(qm.redis, PARTITIONS, keep_ms=0) == 0  # the oldest pending is the first
    assert qm.redis.xrange(stream)[0][0] == first_pending
    # everything handled: all of it may go, the archive keeps it
    qm.worker(claim_idle_ms=0).run_until_idle()
    assert trim(qm.redis, PARTITIONS, keep_ms=60_000) == 0  # younger than the window
    assert trim(qm.redis, PARTITIONS, keep_ms=0) == 31
    assert stream_lengths(qm) == 0
    assert mongo_db.events.count_documents({"user_id": "r"}) == 31
    # new events keep flowing after a trim
    qm.purchase("r", 5, "after")
    projector(qm.redis, PARTITIONS, mongo_db, all_projections()[0]).run_until_idle()
    assert mongo_db.balances.find_one({"_id": "r"})["balance"] == 35
