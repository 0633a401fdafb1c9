"""Real worker processes, killed: nothing lost, every effect exactly once."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from pymongo.database import Database

from streams import HandlerRegistry, QueueManager, Worker, keys
from tests.helpers import eventually

from .conftest import PARTITIONS

pytestmark = pytest.mark.slow  # workers in subprocesses, SIGKILLed and SIGTERMed


def pending(qm: QueueManager) -> int:
    return sum(
        qm.redis.xpending(keys.stream(p, lv), "workers")["pending"]
        for p in keys.partitions(PARTITIONS)
        for lv in keys.LEVELS_DESC
    )


def test_sigkilled_worker_is_taken_over_and_effects_happen_once(
    qm: QueueManager,
    registry: HandlerRegistry,
    make_worker: Callable[..., Worker],
    spawn_worker: Callable[..., subprocess.Popen[bytes]],
    mongo_db: Database[Any],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from .crash_handlers import slow_insert

    monkeypatch.setenv("REDIS_URL", redis_url)
    n = 150
    ids = [qm.enqueue("default", "slow_insert", {"i": i, "ms": 15}) for i in range(n)]
    proc = spawn_worker()
    # a round reads 32 entries and settles them together: kill inside the second round
    eventually(
        lambda: qm.redis.llen("test:ran") >= 40 and pending(qm) > 0,
        interval=0.02,
        message="the worker did not get into its second round",
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    in_flight = pending(qm)
    assert in_flight > 0, "the kill should land mid-batch"

    registry.register("slow_insert", slow_insert)
    make_worker(claim_idle_ms=500).run_until_idle(timeout=60)

    assert pending(qm) == 0
    assert {qm.get_task_status(t)["status"] for t in ids} == {"completed"}  # type: ignore[index]
    docs = list(mongo_db.analytics.find({}, {"i": 1}))
    assert sorted(d["i"] for d in docs) == list(range(n))
    assert {d["_id"] for d in docs} == set(ids)
    runs = Counter(int(x) for x in qm.redis.lrange("test:ran", 0, -1))
    assert set(runs) == set(range(n))
    redelivered = [i for i, c in runs.items() if c > 1]
    assert len(redelivered) <= in_flight  # only what was in flight at the kill ran twice


def test_sigterm_finishes_the_round_and_leaves_nothing_pending(
    qm: QueueManager, spawn_worker: Callable[..., subprocess.Popen[bytes]]
) -> None:
    n = 300
    ids = [qm.enqueue("default", "slow_insert", {"i": i, "ms": 10}) for i in range(n)]
    proc = spawn_worker()
    eventually(
        lambda: qm.redis.llen("test:ran") >= 20,
        interval=0.02,
        message="the worker did not run 20 tasks",
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert pending(qm) == 0
    statuses = Counter(qm.get_task_status(t)["status"] for t in ids)  # type: ignore[index]
    ran = qm.redis.llen("test:ran")
    assert statuses["completed"] == ran and 20 <= ran < n
    assert statuses["queued"] == n - ran


def consumers(qm: QueueManager) -> set[str]:
    """Every consumer of the workers group, on any stream."""
    return {
        c["name"].decode()
        for p in keys.partitions(PARTITIONS)
        for lv in keys.LEVELS_DESC
        for c in qm.redis.xinfo_consumers(keys.stream(p, lv), "workers")
    }


def of_process(names: set[str], pid: int) -> set[str]:
    return {name for name in names if name.split(":")[1] == str(pid)}  # host:pid:thread-i


def test_a_sigkilled_worker_leaves_the_group_once_its_entries_are_taken_over(
    qm: QueueManager, spawn_worker: Callable[..., subprocess.Popen[bytes]]
) -> None:
    n = 120
    ids = [qm.enqueue("default", "slow_insert", {"i": i, "ms": 15}) for i in range(n)]
    forget = ("--forget-idle-ms", "1500")
    dead = spawn_worker(*forget)
    eventually(
        lambda: qm.redis.llen("test:ran") >= 40 and pending(qm) > 0,
        interval=0.02,
        message="the worker did not get into its second round",
    )
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    gone = of_process(consumers(qm), dead.pid)
    assert gone and pending(qm) > 0, "the kill should leave a consumer holding entries"

    survivor = spawn_worker(*forget)

    def finished() -> bool:
        statuses = {qm.get_task_status(t)["status"] for t in ids}  # type: ignore[index]
        return statuses == {"completed"} and pending(qm) == 0

    eventually(finished, timeout=30, message="the survivor did not finish the work")
    eventually(
        lambda: not consumers(qm) & gone,
        timeout=15,
        message=lambda: f"the dead consumer stayed: {sorted(consumers(qm))}",
    )
    live = of_process(consumers(qm), survivor.pid)
    assert live, "the survivor is a consumer"
    time.sleep(2.5)  # quiet streams for longer than the threshold: the live one stays
    assert survivor.poll() is None
    assert of_process(consumers(qm), survivor.pid) == live
    assert sorted(int(x) for x in set(qm.redis.lrange("test:ran", 0, -1))) == list(range(n))


def test_a_sigkill_loses_at_most_one_flush_of_counters_and_no_status(
    qm: QueueManager,
    registry: HandlerRegistry,
    make_worker: Callable[..., Worker],
    spawn_worker: Callable[..., subprocess.Popen[bytes]],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker adds its counters up and writes them once a second: a SIGKILL may
    lose the counts of what it finished in its last second, never more, and never a
    task's status (written with the acknowledgement)."""
    from datetime import datetime

    from .crash_handlers import slow_insert

    monkeypatch.setenv("REDIS_URL", redis_url)
    n = 300
    ids = qm.enqueue_many("default", "slow_insert", [{"i": i, "ms": 8} for i in range(n)])
    proc = spawn_worker()
    eventually(lambda: qm.redis.llen("test:ran") >= 150, interval=0.02, timeout=30)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = time.time()
    counted = qm.get_queue_stats("default")["processed"]
    finished = [
        datetime.fromisoformat(s["finished_at"]).timestamp()
        for s in (qm.get_task_status(t) for t in ids)
        if s is not None and s["status"] == "completed"
    ]
    interval_s = 1.0 + 0.25  # the flush interval, and a margin for a loaded machine
    assert counted <= len(finished)
    assert counted >= sum(at < killed - interval_s for at in finished), (
        counted,
        len(finished),
    )
    registry.register("slow_insert", slow_insert)
    make_worker(claim_idle_ms=500).run_until_idle(timeout=60)
    assert {qm.get_task_status(t)["status"] for t in ids} == {"completed"}  # type: ignore[index]
    after = qm.get_queue_stats("default")["processed"]
    assert after == counted + (n - len(finished))  # the rest, counted by the second worker
