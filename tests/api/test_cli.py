"""The `ledger` console script, run as real processes against the session's servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
from pymongo.database import Database

from api.cli import RET_CONNECT, RET_IMPORT, RET_OK, RET_USAGE
from streams import HandlerRegistry, QueueManager, StreamsConfig

pytestmark = pytest.mark.slow  # the console script as real processes, a demo run among them

ROOT = Path(__file__).resolve().parents[2]


def ledger(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api", *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_every_command_has_help() -> None:
    for command in (
        "demo",
        "serve",
        "worker",
        "project",
        "scheduler",
        "stats",
        "dlq",
        "replay",
        "audit",
    ):
        result = ledger(command, "--help")
        assert result.returncode == RET_OK and "usage: ledger" in result.stdout


def test_worker_burst_stats_and_dead_letters(
    redis: redis_py.Redis, redis_url: str, mongo_url: str, mongo_db: Database[Any]
) -> None:
    env = {
        "REDIS_URL": redis_url,
        "MONGO_URL": mongo_url,
        "MONGO_DB": mongo_db.name,
        "LEDGER_PARTITIONS": "2",
    }
    qm = QueueManager(
        config=StreamsConfig(redis_url=redis_url, partitions=2), registry=HandlerRegistry()
    )
    try:
        qm.enqueue(
            "default",
            "db",
            {"operation": "insert", "collection": "analytics", "data": {"_id": "a1", "n": 1}},
        )
        missing = qm.enqueue("default", "unhandled", {"x": 1})
        result = ledger("worker", "--burst", "--max-attempts", "1", env=env)
        assert result.returncode == RET_OK, result.stderr
        assert "handled 2 deliveries, 1 succeeded" in result.stdout
        assert mongo_db.analytics.find_one({"_id": "a1"}) == {"_id": "a1", "n": 1}

        stats = json.loads(ledger("stats", "default", env=env).stdout)
        assert (stats["processed"], stats["dead"]) == (1, 1)

        listed = ledger("dlq", "list", env=env)
        assert missing in listed.stdout and "no handler registered" in listed.stdout
        dead_id = listed.stdout.split("\t")[0]
        assert ledger("dlq", "requeue", dead_id, env=env).returncode == RET_OK
        assert qm.get_task_status(missing)["status"] == "queued"  # type: ignore[index]
        again = ledger("dlq", "requeue", dead_id, env=env)
        assert again.returncode != RET_OK and "no dead letter" in again.stderr
    finally:
        qm.close()


def test_worker_errors_have_exit_codes(redis_url: str) -> None:
    env = {"REDIS_URL": redis_url}
    bad_import = ledger("worker", "--import", "no_such_module_xyz", env=env)
    assert bad_import.returncode == RET_IMPORT and "no_such_module_xyz" in bad_import.stderr
    bad_queue = ledger("worker", "--queues", "nope", "--burst", env=env)
    assert bad_queue.returncode == RET_USAGE and "unknown queue" in bad_queue.stderr
    down = ledger("stats", env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert down.returncode == RET_CONNECT and "unavailable" in down.stderr


@pytest.mark.timeout(300)  # the run's own bound (a loaded machine starts servers slowly)
def test_demo_runs_and_proves_its_numbers() -> None:
    result = ledger(
        "demo", "--users", "20", "--events", "300", "--workers", "1", "--once", timeout=300
    )
    assert result.returncode == RET_OK, result.stdout + result.stderr
    assert "demo OK" in result.stdout
    assert "/dashboard" in result.stdout and "audit: " in result.stdout
