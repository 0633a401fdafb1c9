"""Delayed tasks keep their data until they run, and the scheduler counts only what it moved.

The task record used to expire after the idempotency TTL (7 days) while a
delay may be 30 days, or the scheduler may be down: the due task was then
skipped silently yet counted as moved. Here the TTL is 1 s, so the same
happens in about a second and a half.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from redis.exceptions import ResponseError

from ledger.tasks import Priority
from streams import HandlerRegistry, QueueManager, Scheduler, StreamsConfig, Worker, keys
from streams.connection import RedisClient
from streams.queue_manager import TASK_ID_NAMESPACE
from streams.replies import entries as stream_entries
from streams.scripts import run_many
from tests.helpers import eventually

from .conftest import PARTITIONS

TTL_S = 1
P0 = keys.partitions(PARTITIONS)[0]


@pytest.fixture
def config(redis_url: str) -> StreamsConfig:
    """Task records (and idempotency records) that expire after one second."""
    return StreamsConfig(redis_url=redis_url, partitions=PARTITIONS, idempotency_ttl_s=TTL_S)


def redis_ms(client: RedisClient) -> int:
    secs, micros = client.time()
    return int(secs) * 1000 + int(micros) // 1000


def wait_until_redis_ms(client: RedisClient, ms: int, timeout: float = 10.0) -> None:
    """Poll Redis's clock (the one the scripts use) until it reaches ``ms``."""
    eventually(
        lambda: redis_ms(client) >= ms,
        timeout=timeout,
        interval=0.02,
        message="Redis's clock did not reach the due time",
    )


def due_at(qm: QueueManager, task_id: str) -> int:
    p = keys.partition_of(task_id, PARTITIONS)
    due = qm.redis.hget(keys.task(p, task_id), "due_at")
    assert due is not None, f"no due_at in the record of {task_id}"
    return int(due)


def test_delayed_task_keeps_its_data_past_the_ttl_and_scheduler_downtime(
    qm: QueueManager, registry: HandlerRegistry, make_worker: Callable[..., Worker]
) -> None:
    ran: dict[str, Mapping[str, Any]] = {}
    registry.register("later", lambda data, db: ran.setdefault(data["name"], data) is not None)
    # "long": a delay longer than the record's TTL; "short": due at once, but the
    # scheduler is down until well after the TTL
    ids = {
        "long": qm.enqueue("default", "later", {"name": "long", "n": 1}, delay=1.5),
        "short": qm.enqueue("default", "later", {"name": "short", "n": 2}, delay=0.05),
    }
    wait_until_redis_ms(qm.redis, max(due_at(qm, t) for t in ids.values()) + 200)

    scheduler = Scheduler(qm.redis, PARTITIONS)
    moved = scheduler.tick()
    task_keys = [keys.task(keys.partition_of(t, PARTITIONS), t) for t in ids.values()]
    ttls = [qm.redis.pttl(k) for k in task_keys]  # on its stream now: the TTL is back
    make_worker().run_until_idle()
    assert {name: dict(data) for name, data in ran.items()} == {
        "long": {"name": "long", "n": 1},
        "short": {"name": "short", "n": 2},
    }
    assert moved == 2 and scheduler.pending() == 0 and scheduler.missing == 0
    assert all(0 < ttl <= TTL_S * 1000 for ttl in ttls), ttls
    for task_id, key in zip(ids.values(), task_keys, strict=True):
        assert qm.get_task_status(task_id)["status"] == "completed"  # type: ignore[index]
        assert qm.redis.hmget(key, "data", "ttl") == [None, None]


def same_partition_keys(n: int) -> list[str]:
    """Idempotency keys whose task ids all land in partition 0 (so one script call sees them)."""
    found: list[str] = []
    i = 0
    while len(found) < n:
        key = f"sched-{i}"
        if keys.partition_of(str(uuid.uuid5(TASK_ID_NAMESPACE, key)), PARTITIONS) == 0:
            found.append(key)
        i += 1
    return found


def test_tick_counts_only_what_it_moved(qm: QueueManager, caplog: pytest.LogCaptureFixture) -> None:
    gone1, gone2, kept = (
        qm.enqueue("default", "later", {"i": i}, delay=0.05, idempotency_key=key)
        for i, key in enumerate(same_partition_keys(3))
    )
    due = max(due_at(qm, t) for t in (gone1, gone2, kept))
    qm.redis.delete(keys.task(P0, gone1), keys.task(P0, gone2))  # records genuinely missing
    wait_until_redis_ms(qm.redis, due + 50)

    scheduler = Scheduler(qm.redis, PARTITIONS, batch=1)  # the missing ones fill whole batches
    with caplog.at_level(logging.ERROR, logger="streams.scheduler"):
        assert scheduler.tick() == 1
    assert scheduler.pending() == 0 and scheduler.missing == 2
    assert gone1 in caplog.text and gone2 in caplog.text
    entries = stream_entries(qm.redis, keys.stream(P0, Priority.NORMAL))
    assert [fields[b"id"].decode() for _, fields in entries] == [kept]


def test_a_task_another_scheduler_moved_meanwhile_is_not_moved_again(qm: QueueManager) -> None:
    """Scheduler A lists the due tasks; B moves them all; A's move then finds them
    gone from the set and moves none: the interleaving the two calls allow."""
    ids = [
        qm.enqueue("default", "later", {"i": i}, delay=0.05, idempotency_key=key)
        for i, key in enumerate(same_partition_keys(3))
    ]
    wait_until_redis_ms(qm.redis, max(due_at(qm, t) for t in ids) + 50)
    a, b = Scheduler(qm.redis, PARTITIONS), Scheduler(qm.redis, PARTITIONS)
    streams = [keys.stream(P0, lv) for lv in keys.LEVELS_DESC]
    (listed,) = run_many(
        a.redis, [(a.scripts.schedule, [keys.scheduled(P0), *streams], ["due", 10])]
    )
    assert sorted(t.decode() for t in listed) == sorted(ids)

    assert b.tick() == 3
    (reply,) = run_many(
        a.redis,
        [
            (
                a.scripts.schedule,
                [keys.scheduled(P0), *streams, *(keys.task(P0, t.decode()) for t in listed)],
                ["move", *listed],
            )
        ],
    )
    assert reply == [0, []]
    entries = stream_entries(qm.redis, keys.stream(P0, Priority.NORMAL))
    assert sorted(fields[b"id"].decode() for _, fields in entries) == sorted(ids)


def test_move_refuses_a_task_not_yet_due_or_a_key_of_another_task(qm: QueueManager) -> None:
    early, other = (
        qm.enqueue("default", "later", {"i": i}, delay=60, idempotency_key=key)
        for i, key in enumerate(same_partition_keys(2))
    )
    s = Scheduler(qm.redis, PARTITIONS)
    streams = [keys.stream(P0, lv) for lv in keys.LEVELS_DESC]
    (reply,) = run_many(
        s.redis,
        [
            (
                s.scripts.schedule,
                [keys.scheduled(P0), *streams, keys.task(P0, early)],
                ["move", early],
            )
        ],
    )
    assert reply == [0, []] and s.pending() == 2  # never early: Redis's clock decides
    with pytest.raises(ResponseError, match="not the record of"):
        run_many(
            s.redis,
            [
                (
                    s.scripts.schedule,
                    [keys.scheduled(P0), *streams, keys.task(P0, other)],
                    ["move", early],
                )
            ],
        )
    assert s.pending() == 2


def test_two_schedulers_at_once_move_each_task_exactly_once(qm: QueueManager) -> None:
    ids = [qm.enqueue("default", "later", {"i": i}, delay=0.2) for i in range(600)]
    wait_until_redis_ms(qm.redis, max(due_at(qm, t) for t in ids) + 50)
    schedulers = [Scheduler(qm.redis, PARTITIONS, batch=7) for _ in range(2)]
    moved = [0, 0]
    start = threading.Barrier(2)

    def run(i: int) -> None:
        start.wait()
        moved[i] = schedulers[i].tick()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sum(moved) == len(ids) and schedulers[0].pending() == 0
    assert [s.missing for s in schedulers] == [0, 0]  # a task the other one took is no loss
    on_streams = [
        fields[b"id"].decode()
        for p in keys.partitions(PARTITIONS)
        for _, fields in stream_entries(qm.redis, keys.stream(p, Priority.NORMAL))
    ]
    assert sorted(on_streams) == sorted(ids)  # each one exactly once
