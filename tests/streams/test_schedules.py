"""Recurring schedules: each tick enqueues one task, whatever the schedulers do.

Every-second schedules (``* * * * * *``, seconds first) keep these tests short:
two schedulers racing, ticks missed while none ran, a scheduler dying between
claiming a tick and enqueueing its task (or between the enqueue and "done").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from ledger.errors import ValidationError
from ledger.tasks import Priority
from streams import HandlerRegistry, QueueManager, Scheduler, Worker, keys, schedules
from streams.connection import RedisClient
from streams.replies import entries as stream_entries
from streams.replies import text
from streams.times import iso_utc

from .conftest import PARTITIONS

EVERY_SECOND = "* * * * * *"
YEARLY = "0 0 1 1 *"
"""For a tick set by hand (``set_due``): the next one is months away, never in a test."""


def fired_tasks(client: RedisClient, task_type: str = "tick") -> list[tuple[str, dict[str, Any]]]:
    """(task id, fields) of every task of ``task_type`` on any stream."""
    found = []
    for p in keys.partitions(PARTITIONS):
        for level in keys.LEVELS_DESC:
            for _, fields in stream_entries(client, keys.stream(p, level)):
                if fields.get(b"ty") == task_type.encode():
                    found.append(
                        (fields[b"id"].decode(), {k.decode(): v for k, v in fields.items()})
                    )
    return found


def set_due(client: RedisClient, name: str, tick_ms: int) -> None:
    """Make ``name``'s next tick ``tick_ms`` (as if no scheduler ran since)."""
    client.hset(keys.schedule(name), "next_run_at", tick_ms)
    client.zadd(keys.SCHEDULES, {name: tick_ms})


def now_ms() -> int:
    return int(time.time() * 1000)


def test_add_list_get_replace_remove(qm: QueueManager) -> None:
    assert qm.add_schedule("nightly", "0 3 * * *", "default", "report", {"x": 1}) is True
    assert qm.add_schedule(
        "fast", "*/2 * * * * *", "high_priority", "tick", {}, priority=4, timezone="Europe/Paris"
    )
    listed = qm.list_schedules()
    assert [s["name"] for s in listed] == ["fast", "nightly"]  # soonest first
    fast = qm.get_schedule("fast")
    assert fast is not None
    assert fast["cron"] == "*/2 * * * * *" and fast["timezone"] == "Europe/Paris"
    assert fast["priority"] == 4 and fast["task_data"] == {}
    assert fast["last_run_at"] is None and fast["last_task_id"] is None
    assert fast["next_run_at"].endswith("Z")
    nightly = qm.get_schedule("nightly")
    assert nightly is not None and nightly["priority"] == int(Priority.NORMAL)  # the queue's
    assert nightly["next_run_at"].endswith("T03:00:00.000Z")

    assert qm.add_schedule("nightly", "0 4 * * *", "default", "report", {"x": 2}) is False
    nightly = qm.get_schedule("nightly")
    assert nightly is not None and nightly["cron"] == "0 4 * * *"
    assert nightly["task_data"] == {"x": 2}
    assert qm.remove_schedule("nightly") is True
    assert qm.remove_schedule("nightly") is False
    assert qm.get_schedule("nightly") is None
    assert [s["name"] for s in qm.list_schedules()] == ["fast"]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (dict(name="bad name"), "name"),
        (dict(name="x" * 65), "name"),
        (dict(name=""), "name"),
        (dict(name="a:b"), "name"),
        (dict(cron="* * * *"), "cron"),
        (dict(cron="61 * * * *"), "cron"),
        (dict(cron="* * * * * * *"), "cron"),
        (dict(cron="not a cron"), "cron"),
        (dict(cron=5), "cron"),
        (dict(cron=""), "cron"),
        (dict(timezone="Mars/Olympus"), "timezone"),
        (dict(timezone="../../etc/passwd"), "timezone"),
        (dict(timezone=""), "timezone"),
        (dict(timezone=1), "timezone"),
        (dict(queue_name="nope"), "queue_name"),
        (dict(task_type=""), "task_type"),
        (dict(task_data=[1]), "task_data"),
        (dict(task_data={"big": "x" * (2 * 1024 * 1024)}), "task_data"),
        (dict(priority=9), "priority"),
        (dict(priority="high"), "priority"),
    ],
)
def test_bad_input_names_the_field_and_stores_nothing(
    qm: QueueManager, args: dict[str, Any], field: str
) -> None:
    call: dict[str, Any] = dict(
        name="ok", cron="* * * * *", queue_name="default", task_type="t", task_data={}
    )
    call.update(args)
    with pytest.raises(ValidationError) as exc:
        qm.add_schedule(**call)
    assert exc.value.field is not None and exc.value.field.startswith(field)
    assert qm.list_schedules() == []
    assert qm.redis.zcard(keys.SCHEDULES) == 0


def test_next_tick_follows_the_time_zone_and_dst() -> None:
    jan = 1767225600000  # 2026-01-01T00:00:00Z
    jul = 1782864000000  # 2026-07-01T00:00:00Z
    assert schedules.next_tick("0 12 * * *", "Europe/Paris", jan) == jan + 11 * 3600_000
    assert schedules.next_tick("0 12 * * *", "Europe/Paris", jul) == jul + 10 * 3600_000
    assert schedules.next_tick("0 12 * * *", "UTC", jan) == jan + 12 * 3600_000
    assert schedules.next_tick("*/2 * * * * *", "UTC", jan + 500) == jan + 2000
    assert schedules.next_tick("*/15 * * * *", "UTC", jan) == jan + 15 * 60_000


@pytest.mark.slow  # seconds of real ticks
def test_two_schedulers_fire_each_tick_once(qm: QueueManager) -> None:
    qm.add_schedule("every-second", EVERY_SECOND, "default", "tick", {"n": 1})
    schedulers = [Scheduler(qm.redis, PARTITIONS, interval_ms=5) for _ in range(3)]
    threads = [threading.Thread(target=s.run, daemon=True) for s in schedulers]
    for t in threads:
        t.start()
    time.sleep(3.6)
    for s in schedulers:
        s.stop()
    for t in threads:
        t.join(5)
    time.sleep(0.1)
    # a last pass: nothing left claimed and not enqueued
    assert (
        Scheduler(qm.redis, PARTITIONS)._finish([text(n) for n in qm.redis.smembers(keys.FIRING)])
        == 0
    )
    tasks = fired_tasks(qm.redis)
    ids = [t for t, _ in tasks]
    assert len(ids) == len(set(ids)) >= 3
    record = qm.get_schedule("every-second")
    assert record is not None
    last = record["last_task_id"]
    assert last in ids
    assert sum(s.fired for s in schedulers) == len(ids)
    assert int(qm.redis.hget(keys.SCHEDULE_STATS, "fired") or 0) == len(ids)
    first_tick = min(
        tick
        for tick in range(now_ms() // 1000 * 1000 - 10_000, now_ms(), 1000)
        if schedules.task_id("every-second", tick) in ids
    )
    expected = {schedules.task_id("every-second", first_tick + 1000 * i) for i in range(len(ids))}
    assert set(ids) == expected  # no tick skipped, none twice


def test_missed_ticks_coalesce_into_one_run(qm: QueueManager) -> None:
    qm.add_schedule("catch-up", EVERY_SECOND, "default", "tick", {})
    missed = now_ms() // 1000 * 1000 - 5000  # five ticks ago, no scheduler since
    set_due(qm.redis, "catch-up", missed)
    scheduler = Scheduler(qm.redis, PARTITIONS)
    before = now_ms()
    assert scheduler.fire() == 1
    nxt = int(qm.redis.hget(keys.schedule("catch-up"), "next_run_at") or 0)
    assert nxt > before and nxt % 1000 == 0  # the first tick after now: the rest skipped
    assert [t for t, _ in fired_tasks(qm.redis)] == [schedules.task_id("catch-up", missed)]
    record = qm.get_schedule("catch-up")
    assert record is not None
    assert record["last_task_id"] == schedules.task_id("catch-up", missed)
    assert record["last_run_at"] == iso_utc(missed)


@pytest.mark.slow  # seconds of real ticks
def test_a_change_or_a_delete_takes_effect_at_the_next_tick(qm: QueueManager) -> None:
    qm.add_schedule("yearly", "0 0 1 1 *", "default", "tick", {"v": 1})
    scheduler = Scheduler(qm.redis, PARTITIONS)
    assert scheduler.fire() == 0
    qm.add_schedule("yearly", EVERY_SECOND, "default", "tick", {"v": 2})
    time.sleep(1.1)
    assert scheduler.fire() == 1
    ((_, fields),) = fired_tasks(qm.redis)
    from streams.codec import unpack

    assert unpack(fields["d"]) == {"v": 2}

    qm.add_schedule("gone", EVERY_SECOND, "default", "other", {})
    assert qm.remove_schedule("gone")
    time.sleep(1.1)
    assert scheduler.fire() <= 1  # "yearly" may fire again; "gone" never
    assert fired_tasks(qm.redis, "other") == []


def claim_due(s: Scheduler) -> list[str]:
    """A scheduler's first step alone: claim what is due (then "die")."""
    now, due, _ = s.scripts.tick(keys=[keys.SCHEDULES, keys.FIRING], args=["due", 100])
    return s._claim([text(d) for d in due], int(now))


def test_a_scheduler_dying_after_its_claim_leaves_the_tick_to_another(qm: QueueManager) -> None:
    qm.add_schedule("crashy", YEARLY, "default", "tick", {})
    tick = now_ms() // 1000 * 1000 - 1000
    set_due(qm.redis, "crashy", tick)
    dead = Scheduler(qm.redis, PARTITIONS)
    assert claim_due(dead) == ["crashy"]  # claimed, not enqueued: then SIGKILLed
    assert fired_tasks(qm.redis) == [] and qm.redis.sismember(keys.FIRING, "crashy")
    assert claim_due(Scheduler(qm.redis, PARTITIONS)) == []  # nobody claims it again

    other = Scheduler(qm.redis, PARTITIONS)
    assert other.fire() == 1
    assert [t for t, _ in fired_tasks(qm.redis)] == [schedules.task_id("crashy", tick)]
    assert not qm.redis.exists(keys.firing("crashy"))
    assert other.fire() == 0 and len(fired_tasks(qm.redis)) == 1


def test_a_scheduler_dying_after_its_enqueue_is_not_enqueued_twice(qm: QueueManager) -> None:
    qm.add_schedule("crashy", YEARLY, "default", "tick", {})
    tick = now_ms() // 1000 * 1000 - 1000
    set_due(qm.redis, "crashy", tick)
    dead = Scheduler(qm.redis, PARTITIONS)
    dead._enqueue(claim_due(dead))  # enqueued; died before "done"
    assert len(fired_tasks(qm.redis)) == 1

    other = Scheduler(qm.redis, PARTITIONS)
    assert other.fire() == 1  # finishes the marker: the enqueue is a "dup"
    assert [t for t, _ in fired_tasks(qm.redis)] == [schedules.task_id("crashy", tick)]
    assert int(qm.redis.hget(keys.SCHEDULE_STATS, "fired") or 0) == 1


def test_a_deleted_schedule_still_fires_a_tick_already_claimed(qm: QueueManager) -> None:
    qm.add_schedule("bye", YEARLY, "default", "tick", {})
    set_due(qm.redis, "bye", now_ms() - 1000)
    assert claim_due(Scheduler(qm.redis, PARTITIONS)) == ["bye"]
    qm.remove_schedule("bye")
    assert Scheduler(qm.redis, PARTITIONS).fire() == 1
    assert len(fired_tasks(qm.redis)) == 1 and qm.get_schedule("bye") is None


def test_a_fired_task_runs_through_a_worker(
    qm: QueueManager, registry: HandlerRegistry, make_worker: Callable[..., Worker]
) -> None:
    seen: list[Mapping[str, Any]] = []
    registry.register("tick", lambda data, db: not seen.append(data))  # type: ignore[func-returns-value]
    qm.add_schedule("work", YEARLY, "default", "tick", {"hello": "world"})
    tick = now_ms() // 1000 * 1000 - 1000
    set_due(qm.redis, "work", tick)
    assert Scheduler(qm.redis, PARTITIONS).fire() == 1
    make_worker().run_until_idle()
    assert [dict(d) for d in seen] == [{"hello": "world"}]
    status = qm.get_task_status(schedules.task_id("work", tick))
    assert status is not None and status["status"] == "completed"
    assert status["task_type"] == "tick" and status["queue_name"] == "default"
