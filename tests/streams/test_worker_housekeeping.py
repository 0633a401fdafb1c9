"""Issue 12, the worker side: retries claimed when due without sweeping every
partition, queue statistics added up in the worker and written per interval,
one sweep per process, and the retention of finished task records."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from streams import HandlerRegistry, QueueManager, RetryPolicy, Worker, keys
from streams.handlers import DBManager
from streams.worker import Housekeeping, WorkerConfig
from tests.helpers import eventually

from .conftest import PARTITIONS

MakeWorker = Callable[..., Worker]


def test_sweeps_are_paced_by_claim_idle_and_retries_by_their_due_time() -> None:
    assert WorkerConfig().sweep_every_ms == 15_000
    assert WorkerConfig(claim_idle_ms=1000, reclaim_every_ms=10).sweep_every_ms == 250
    assert WorkerConfig(claim_idle_ms=0, reclaim_every_ms=0).sweep_every_ms == 0
    hk = Housekeeping()
    parts = keys.partitions(PARTITIONS)
    assert hk.take(100.0, 15.0, parts) == (True, list(parts))  # the first look sweeps
    assert hk.take(100.1, 15.0, parts) == (False, [])
    hk.retry_at(parts[1], 100.5)
    hk.retry_at(parts[1], 100.3)  # the earliest counts
    assert hk.next_at() == 100.3
    assert hk.take(100.2, 15.0, parts) == (False, [])
    assert hk.take(100.3, 15.0, parts) == (False, [parts[1]])
    assert hk.take(100.4, 15.0, parts) == (False, [])


def test_retries_come_back_at_their_backoff_not_at_the_sweep(
    qm: QueueManager, registry: HandlerRegistry, make_worker: MakeWorker
) -> None:
    calls: list[float] = []

    def twice_then_ok(data: Mapping[str, Any], db_manager: DBManager) -> bool:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise TimeoutError("not yet")
        return True

    registry.register("twice", twice_then_ok)
    task_id = qm.enqueue("default", "twice", {})
    # a sweep only every 15 s: the retries are found by their due time alone
    worker = make_worker(
        claim_idle_ms=60_000, retry=RetryPolicy(max_attempts=5, base_ms=50, max_ms=100)
    )
    started = time.monotonic()
    worker.run_until_idle(timeout=10)
    assert len(calls) == 3 and time.monotonic() - started < 5
    status = qm.get_task_status(task_id)
    assert status is not None and (status["status"], status["attempts"]) == ("completed", 3)
    stats = qm.get_queue_stats("default")
    assert (stats["processed"], stats["failed"], stats["retried"]) == (1, 2, 2)


def test_running_workers_write_their_stats_within_an_interval(
    qm: QueueManager, registry: HandlerRegistry
) -> None:
    registry.register("ok", lambda data, db: True)
    qm.start_workers(3, stats_every_ms=100, block_ms=50)
    try:
        ids = qm.enqueue_many("default", "ok", [{"i": i} for i in range(40)])
        eventually(lambda: qm.get_queue_stats("default")["processed"] == 40, timeout=10)
        assert all(qm.get_task_status(t)["status"] == "completed" for t in ids)  # type: ignore[index]
        lat = qm.get_queue_stats("default")["latency_ms"]
        assert lat["p50"] is not None and lat["p99"] is not None
        # one Housekeeping for the process's consumers
        shared = {id(w.housekeeping) for w, _ in qm._workers}
        assert len(shared) == 1
    finally:
        qm.stop_workers()
    assert qm.get_queue_stats("default")["processed"] == 40


def test_a_blocked_consumer_wakes_for_a_single_task(
    qm: QueueManager, registry: HandlerRegistry, make_worker: MakeWorker
) -> None:
    done = threading.Event()

    def ping(data: Mapping[str, Any], db_manager: DBManager) -> bool:
        done.set()
        return True

    registry.register("ping", ping)
    worker = make_worker(block_ms=5000, claim_idle_ms=60_000)
    worker.step(block=True)  # an empty round: the next one goes straight to the wait
    thread = threading.Thread(target=worker.step, kwargs={"block": True})
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    qm.enqueue("default", "ping", {})
    assert done.wait(3) and time.monotonic() - started < 2
    thread.join(5)


def test_finished_status_is_kept_for_status_ttl_but_a_keyed_task_for_its_window(
    qm: QueueManager, registry: HandlerRegistry, make_worker: MakeWorker
) -> None:
    registry.register("ok", lambda data, db: True)
    plain = qm.enqueue("default", "ok", {"n": 1})
    keyed = qm.enqueue("default", "ok", {"n": 2}, idempotency_key="order-77")
    make_worker(status_ttl_s=1).run_until_idle()
    for task_id in (plain, keyed):
        status = qm.get_task_status(task_id)
        assert status is not None and status["status"] == "completed"

    def ttl(task_id: str) -> int:
        return int(qm.redis.ttl(keys.task(keys.partition_of(task_id, PARTITIONS), task_id)))

    assert ttl(plain) == -2  # its hash became a field of a done bucket (streams.finished)
    assert ttl(keyed) > 3600  # the idempotency window set at enqueue still holds
    eventually(lambda: qm.get_task_status(plain) is None, timeout=5)
    # a repeat within the window finds the first task (nothing runs again)
    assert qm.enqueue("default", "ok", {"n": 2}, idempotency_key="order-77") == keyed
    assert qm.get_task_status(keyed)["status"] == "completed"  # type: ignore[index]


def test_the_counters_equal_what_ran(qm: QueueManager, registry: HandlerRegistry) -> None:
    """Counters summed in the workers and written once per interval add up to exactly
    what the handlers did: processed, failed (each failed attempt), retried, dead."""
    attempts: dict[str, int] = {}
    lock = threading.Lock()

    def flaky(data: Mapping[str, Any], db_manager: DBManager) -> bool:
        with lock:
            attempts[data["k"]] = attempts.get(data["k"], 0) + 1
            n = attempts[data["k"]]
        return n > int(data["fails"])  # fails its first `fails` attempts

    registry.register("flaky", flaky)
    plan = {"default": [0] * 20 + [1] * 8 + [5] * 3, "high_priority": [0] * 10 + [2] * 4}
    for queue, fails in plan.items():
        qm.enqueue_many(
            queue, "flaky", [{"k": f"{queue}-{i}", "fails": f} for i, f in enumerate(fails)]
        )
    qm.start_workers(
        3, stats_every_ms=100, retry=RetryPolicy(max_attempts=3, base_ms=10, max_ms=20)
    )
    try:
        total = sum(len(f) for f in plan.values())
        eventually(
            lambda: sum(s["processed"] + s["dead"] for s in qm.get_queue_stats().values()) == total,
            timeout=20,
        )
    finally:
        qm.stop_workers()
    for queue, fails in plan.items():
        ran = [min(f, 3) if f >= 3 else f + 1 for f in fails]  # attempts each task took
        stats = qm.get_queue_stats(queue)
        want = {
            "processed": sum(f < 3 for f in fails),
            "dead": sum(f >= 3 for f in fails),
            "failed": sum(n - (f < 3) for f, n in zip(fails, ran, strict=True)),
            "retried": sum(min(f, 2) for f in fails),
        }
        assert {k: stats[k] for k in want} == want, queue
        assert [attempts[f"{queue}-{i}"] for i in range(len(fails))] == ran
    assert len(qm.dead_letters()) == 3
