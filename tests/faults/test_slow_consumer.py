"""A consumer too slow for ``claim_idle_ms`` loses its entry to another; when it
finally settles, its stale outcome must not overwrite the new owner's."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import redis as redis_py

from streams import HandlerRegistry, QueueManager, RetryPolicy, StreamsConfig
from streams.connection import connect
from streams.handlers import DBManager

from .conftest import PARTITIONS


def test_a_stale_retry_does_not_hide_a_dead_letter(redis: redis_py.Redis, redis_url: str) -> None:
    runs: list[float] = []
    first_run_started = threading.Event()

    def slow_then_fail(data: Mapping[str, Any], db_manager: DBManager) -> bool:
        runs.append(time.monotonic())
        if len(runs) == 1:  # the first delivery outlives claim_idle_ms
            first_run_started.set()
            time.sleep(1.0)
        raise RuntimeError("always fails")

    registry = HandlerRegistry()
    registry.register("slow_fail", slow_then_fail)
    qm = QueueManager(
        config=StreamsConfig(redis_url=redis_url, partitions=PARTITIONS),
        client=connect(redis_url),
        registry=registry,
    )
    try:
        task_id = qm.enqueue("default", "slow_fail", {"x": 1})
        retry = RetryPolicy(max_attempts=2, base_ms=10, max_ms=20)
        slow = qm.worker(retry=retry, claim_idle_ms=60_000)
        fast = qm.worker(retry=retry, claim_idle_ms=200, reclaim_every_ms=20)
        slow_thread = threading.Thread(target=slow.step)
        slow_thread.start()
        assert first_run_started.wait(10)
        # the fast worker takes the entry over (attempt 2 = the last) and dead-letters it
        fast.run_until_idle(timeout=10)
        assert [d.task_id for d in qm.dead_letters()] == [task_id]
        assert qm.get_task_status(task_id)["status"] == "failed"  # type: ignore[index]
        slow_thread.join(10)  # the slow worker now settles its stale delivery
        fast.run_until_idle(timeout=10)
        status = qm.get_task_status(task_id)
        assert [d.task_id for d in qm.dead_letters()] == [task_id]
        assert status is not None and status["status"] == "failed", status
        assert len(runs) == 2
    finally:
        qm.close()
