"""Workers: handlers, status, retries with backoff, dead letters, poison, requeue."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from pymongo.database import Database

from ledger.tasks import Priority
from streams import HandlerRegistry, QueueManager, Retry, Worker, keys
from streams.handlers import DBManager
from streams.replies import entries as stream_entries
from tests.helpers import eventually
from tests.streamlog import xadd_fields

from .conftest import PARTITIONS

MakeWorker = Callable[..., Worker]


def test_original_handler_runs_unchanged(
    qm: QueueManager, registry: HandlerRegistry, make_worker: MakeWorker, mongo_db: Database[Any]
) -> None:
    # The original system's credit-calculation example: handler(data, db_manager) -> bool
    def credit_calculation(data: Mapping[str, Any], db_manager: DBManager) -> bool:
        user = db_manager.find_one("users", {"user_id": data["user_id"]})
        score = 500 + (100 if user else 0)
        db_manager.insert("credit_calculations", {"user_id": data["user_id"], "score": score})
        return True

    qm.register_handler("credit_calculation", credit_calculation)
    qm.register_user("u1", "u1@example.com", priority=Priority.CRITICAL)  # runs first
    task_id = qm.enqueue(
        queue_name="high_priority",
        task_type="credit_calculation",
        task_data={"user_id": "u1"},
        priority=Priority.HIGH,
        delay=0,
    )
    assert qm.get_task_status(task_id)["status"] == "queued"  # type: ignore[index]
    assert make_worker().run_until_idle() == 2
    status = qm.get_task_status(task_id)
    assert status is not None
    assert (status["status"], status["attempts"], status["last_error"]) == ("completed", 1, None)
    assert status["enqueued_at"] <= status["started_at"] <= status["finished_at"]
    assert status["finished_at"].endswith("Z")
    # the registration event reached the original `users` collection, keyed by event id
    user = mongo_db.users.find_one({"_id": "u1:1"})
    assert user is not None and user["email"] == "u1@example.com"
    calculation = mongo_db.credit_calculations.find_one({"_id": task_id})
    assert calculation is not None and calculation["score"] == 600


def test_default_db_handler_runs_original_tasks(
    qm: QueueManager, make_worker: MakeWorker, mongo_db: Database[Any]
) -> None:
    qm.enqueue(
        "default",
        "db",
        {"operation": "insert", "collection": "notifications", "data": {"_id": "n1", "text": "hi"}},
    )
    make_worker().run_until_idle()
    qm.enqueue(
        "default",
        "db",
        {
            "operation": "update",
            "collection": "notifications",
            "filter": {"_id": "n1"},
            "data": {"text": "hello"},
        },
    )
    make_worker().run_until_idle()
    notification = mongo_db.notifications.find_one({"_id": "n1"})
    assert notification is not None and notification["text"] == "hello"
    qm.enqueue(
        "default",
        "db",
        {"operation": "delete", "collection": "notifications", "filter": {"_id": "n1"}},
    )
    make_worker().run_until_idle()
    assert mongo_db.notifications.count_documents({}) == 0


def test_failing_handler_backs_off_then_dead_letters(
    qm: QueueManager, registry: HandlerRegistry, make_worker: MakeWorker
) -> None:
    calls: list[float] = []

    def flaky(data: Mapping[str, Any], db_manager: DBManager) -> bool:
        calls.append(time.monotonic())
        raise TimeoutError("upstream timed out")

    registry.register("flaky", flaky)
    task_id = qm.enqueue("default", "flaky", {"n": 1})
    from streams import RetryPolicy

    worker = make_worker(retry=RetryPolicy(max_attempts=4, base_ms=100, max_ms=10_000))
    worker.run_until_idle(timeout=20)
    assert len(calls) == 4
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    # equal-jitter backoff: attempt n waits between base*2^(n-1)/2 and base*2^(n-1)
    for n, gap in enumerate(gaps, start=1):
        assert gap >= 0.1 * 2 ** (n - 1) / 2 - 0.005, gaps
    assert gaps[2] > gaps[0], gaps
    status = qm.get_task_status(task_id)
    assert status is not None and status["status"] == "failed" and status["attempts"] == 4
    assert status["last_error"] == "TimeoutError: upstream timed out"
    [dead] = qm.dead_letters()
    assert (dead.task_id, dead.attempts, dead.queue_name) == (task_id, 4, "default")
    assert dead.error == "TimeoutError: upstream timed out"
    assert qm.get_queue_stats("default")["dead"] == 1
    # fixed and requeued: it runs once more and completes
    registry.register("flaky", lambda data, db: True)
    qm.requeue(dead.id)
    assert qm.get_task_status(task_id)["status"] == "queued"  # type: ignore[index]
    make_worker().run_until_idle()
    assert qm.get_task_status(task_id)["status"] == "completed"  # type: ignore[index]
    assert qm.dead_letters() == []
    with pytest.raises(Exception, match="no dead letter"):
        qm.requeue(dead.id)


def test_retry_exception_and_false_result_retry(
    qm: QueueManager, registry: HandlerRegistry, make_worker: MakeWorker
) -> None:
    seen: dict[str, int] = {}

    def picky(data: Mapping[str, Any], db_manager: DBManager) -> bool:
        seen[data["mode"]] = seen.get(data["mode"], 0) + 1
        if seen[data["mode"]] == 1:
            if data["mode"] == "raise":
                raise Retry(delay_ms=10)
            return False
        return True

    registry.register("picky", picky)
    ids = [qm.enqueue("default", "picky", {"mode": m}) for m in ("raise", "false")]
    make_worker().run_until_idle()
    assert seen == {"raise": 2, "false": 2}
    for task_id in ids:
        status = qm.get_task_status(task_id)
        assert status is not None and (status["status"], status["attempts"]) == ("completed", 2)


def test_unknown_task_type_ends_in_dead_letters(qm: QueueManager, make_worker: MakeWorker) -> None:
    task_id = qm.enqueue("default", "nobody_handles_this", {"x": 1})
    make_worker().run_until_idle()
    [dead] = qm.dead_letters()
    assert dead.task_id == task_id and "no handler registered" in dead.error


@pytest.mark.parametrize(
    "fields",
    [
        {b"k": b"task", b"id": b"t1", b"q": b"default", b"ty": b"x", b"d": b"\xc1\xff", b"t": b"1"},
        {b"k": b"credits_stolen", b"u": b"x"},
        {b"garbage": b"\x00\x01"},
        {b"k": b"credits_used", b"u": b"a", b"v": b"not-a-number"},
    ],
)
def test_poison_entries_go_to_dead_letters_and_nothing_stalls(
    qm: QueueManager, registry: HandlerRegistry, make_worker: MakeWorker, fields: dict[bytes, bytes]
) -> None:
    done: list[int] = []

    def ok(data: Mapping[str, Any], db_manager: DBManager) -> bool:
        done.append(data["i"])
        return True

    registry.register("ok", ok)
    qm.enqueue("default", "ok", {"i": 1})
    qm.redis.xadd(keys.stream(keys.partitions(PARTITIONS)[0], Priority.NORMAL), xadd_fields(fields))
    qm.enqueue("default", "ok", {"i": 2})
    make_worker().run_until_idle()
    assert sorted(done) == [1, 2]
    [dead] = qm.dead_letters()
    assert dead.error.startswith("poison entry")


def test_priorities_hold_under_a_low_backlog(
    qm: QueueManager, registry: HandlerRegistry, make_worker: MakeWorker
) -> None:
    order: list[str] = []

    def job(data: Mapping[str, Any], db_manager: DBManager) -> bool:
        order.append(data["level"])
        return True

    registry.register("job", job)
    pipe_tasks = 600
    for _ in range(pipe_tasks):
        qm.enqueue("low_priority", "job", {"level": "LOW"})
    for level in (Priority.NORMAL, Priority.HIGH, Priority.CRITICAL):
        for _ in range(20):
            qm.enqueue("default", "job", {"level": level.name}, priority=level)
    make_worker(batch=32).run_until_idle(timeout=60)
    assert len(order) == pipe_tasks + 60
    first = order[:70]
    # every CRITICAL, HIGH and NORMAL task ran before most of the LOW backlog …
    for name in ("CRITICAL", "HIGH", "NORMAL"):
        assert order.index(name) < 40 and len(order) - order[::-1].index(name) <= 90
    assert order.index("CRITICAL") <= order.index("HIGH") <= order.index("NORMAL")
    # … yet LOW was never starved: it got its guaranteed share in every round.
    assert 0 < first.count("LOW") < 25


def test_lower_levels_get_a_share_while_critical_floods(
    qm: QueueManager, registry: HandlerRegistry, make_worker: MakeWorker
) -> None:
    order: list[str] = []

    def job(data: Mapping[str, Any], db_manager: DBManager) -> bool:
        order.append(data["level"])
        return True

    registry.register("job", job)
    for _ in range(400):
        qm.enqueue("default", "job", {"level": "CRITICAL"}, priority=Priority.CRITICAL)
    for _ in range(10):
        qm.enqueue("low_priority", "job", {"level": "LOW"})
    make_worker(batch=16).run_until_idle(timeout=60)
    last_low = len(order) - order[::-1].index("LOW")
    assert last_low < 250, "LOW waited for the whole CRITICAL flood"


def test_delayed_tasks_run_no_earlier_than_due(
    qm: QueueManager, registry: HandlerRegistry, make_worker: MakeWorker
) -> None:
    from streams import Scheduler

    ran: dict[str, float] = {}
    registry.register("later", lambda data, db: ran.setdefault(data["name"], time.time()) > 0)
    enqueued = time.time()
    ids = {
        name: qm.enqueue("default", "later", {"name": name}, delay=delay)
        for name, delay in (("soon", 0.3), ("later", 0.8), ("now", 0))
    }
    assert qm.get_task_status(ids["soon"])["status"] == "scheduled"  # type: ignore[index]
    scheduler, worker = Scheduler(qm.redis, PARTITIONS), make_worker()

    def all_ran() -> bool:
        scheduler.tick()
        worker.step()
        return len(ran) == 3

    eventually(all_ran, timeout=10, interval=0.01, message=lambda: f"only {sorted(ran)} ran")
    assert set(ran) == {"now", "soon", "later"}
    assert ran["soon"] >= enqueued + 0.3 and ran["later"] >= enqueued + 0.8
    assert ran["now"] < ran["soon"] < ran["later"]
    assert scheduler.pending() == 0


def test_completed_task_is_not_run_again(
    qm: QueueManager, registry: HandlerRegistry, make_worker: MakeWorker
) -> None:
    runs: list[int] = []

    def once(data: Mapping[str, Any], db_manager: DBManager) -> bool:
        runs.append(1)
        return True

    registry.register("once", once)
    task_id = qm.enqueue("default", "once", {})
    p = keys.partition_of(task_id, PARTITIONS)
    entry = stream_entries(qm.redis, keys.stream(p, Priority.NORMAL))[0][1]
    make_worker().run_until_idle()
    # a completed task's entry is deleted once every group is past it (streams.prune),
    # and its record is a field of a done bucket (streams.finished) …
    assert stream_entries(qm.redis, keys.stream(p, Priority.NORMAL)) == []
    assert not qm.redis.exists(keys.task(p, task_id))
    # … and if the same task entry appears again (e.g. an operator re-adds it by hand)
    qm.redis.xadd(keys.stream(p, Priority.NORMAL), xadd_fields(entry))
    make_worker().run_until_idle()
    assert runs == [1]


def test_same_entry_id_in_two_streams_counts_attempts_apart(
    qm: QueueManager, registry: HandlerRegistry, make_worker: MakeWorker
) -> None:
    from streams.codec import pack

    runs: list[str] = []

    def job(data: Mapping[str, Any], db_manager: DBManager) -> bool:
        runs.append(data["name"])
        return True

    registry.register("job", job)
    make_worker()  # creates the groups
    for name, level in (("a", Priority.CRITICAL), ("b", Priority.LOW)):
        p = keys.partition_of(f"task-{name}", PARTITIONS)
        qm.redis.xadd(
            keys.stream(p, level),
            {
                "k": "task",
                "id": f"task-{name}",
                "q": "default",
                "ty": "job",
                "d": pack({"name": name}),
                "t": 1,
            },
            id="5-0",
        )
    make_worker().run_until_idle()
    assert sorted(runs) == ["a", "b"]
    for name in "ab":
        status = qm.get_task_status(f"task-{name}")
        assert status is not None and (status["status"], status["attempts"]) == ("completed", 1)


def test_a_round_reads_highest_first_and_gives_each_lower_level_one(
    qm: QueueManager, make_worker: Callable[..., Worker]
) -> None:
    """read.lua: per partition, CRITICAL takes the share, each lower level still gets one."""
    for queue, level in (
        ("low_priority", Priority.LOW),
        ("default", Priority.NORMAL),
        ("high_priority", Priority.HIGH),
        ("default", Priority.CRITICAL),
    ):
        qm.enqueue_many(queue, "noop", [{"i": i} for i in range(200)], priority=level)
    worker = make_worker(batch=2 * PARTITIONS)  # a share of 2 for each partition
    got = Counter(d.level for d in worker._read())
    one = PARTITIONS
    assert got == {
        Priority.CRITICAL: 2 * one,
        Priority.HIGH: one,
        Priority.NORMAL: one,
        Priority.LOW: one,
    }
    for p in keys.partitions(PARTITIONS):  # CRITICAL runs dry (the group stays)
        qm.redis.xtrim(keys.stream(p, Priority.CRITICAL), maxlen=0)
    got = Counter(d.level for d in worker._read())
    assert got == {Priority.HIGH: 2 * one, Priority.NORMAL: one, Priority.LOW: one}
