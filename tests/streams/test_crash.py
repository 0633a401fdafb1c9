"""Real worker processes, killed: nothing lost, every effect exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo.database import Database

from streams import HandlerRegistry, QueueManager, Worker, keys

from .conftest import PARTITIONS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spawn_worker(redis_url: str, mongo_url: str, mongo_db: Database[Any]
                 ) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "REDIS_URL": redis_url, "MONGO_URL": mongo_url,
           "MONGO_DB": mongo_db.name, "LEDGER_PARTITIONS": str(PARTITIONS)}

    def spawn(*extra: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api", "worker", "--import", "tests.streams.crash_handlers",
             "--concurrency", "1", "--claim-idle-ms", "500", "--log-level", "WARNING", *extra],
            env=env, cwd=ROOT)
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


def pending(qm: QueueManager) -> int:
    return sum(qm.redis.xpending(keys.stream(p, lv), "workers")["pending"]
               for p in range(PARTITIONS) for lv in keys.LEVELS_DESC)


def test_sigkilled_worker_is_taken_over_and_effects_happen_once(
        qm: QueueManager, registry: HandlerRegistry, make_worker: Callable[..., Worker],
        spawn_worker: Callable[..., subprocess.Popen[bytes]], mongo_db: Database[Any],
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from .crash_handlers import slow_insert
    monkeypatch.setenv("REDIS_URL", redis_url)
    n = 150
    ids = [qm.enqueue("default", "slow_insert", {"i": i, "ms": 15}) for i in range(n)]
    proc = spawn_worker()
    # a round reads 32 entries and settles them together: kill inside the second round
    wait_for(lambda: qm.redis.llen("test:ran") >= 40 and pending(qm) > 0)
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
        qm: QueueManager, spawn_worker: Callable[..., subprocess.Popen[bytes]]) -> None:
    n = 300
    ids = [qm.enqueue("default", "slow_insert", {"i": i, "ms": 10}) for i in range(n)]
    proc = spawn_worker()
    wait_for(lambda: qm.redis.llen("test:ran") >= 20)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert pending(qm) == 0
    statuses = Counter(qm.get_task_status(t)["status"] for t in ids)  # type: ignore[index]
    ran = qm.redis.llen("test:ran")
    assert statuses["completed"] == ran and 20 <= ran < n
    assert statuses["queued"] == n - ran
