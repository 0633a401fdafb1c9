"""Fixtures of the cluster tests: the session's 3-master Redis Cluster (started once,
shared with the cluster backend of tests/conftest.py) and real processes on it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo.database import Database

from api.dev.cluster import RedisClusterNodes
from api.dev.deployment import Deployment

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 8
"""Partitions of the deployments here: enough that every master holds some."""


@pytest.fixture(scope="session")
def redis_cluster_nodes(redis_backend_cluster: RedisClusterNodes) -> RedisClusterNodes:
    """The session's 3-master cluster (the one the cluster backend runs on)."""
    return redis_backend_cluster


@pytest.fixture
def redis_cluster(redis_cluster_nodes: RedisClusterNodes) -> str:
    """The ``redis+cluster://`` URL of the session's cluster, flushed before the test."""
    redis_cluster_nodes.flushall()
    return redis_cluster_nodes.url


@pytest.fixture
def cluster_deployment(
    redis_cluster: str, mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> Iterator[Deployment]:
    """Real ``ledger`` processes on the session's cluster and this test's database,
    ``PARTITIONS`` partitions, each logging to ``<tmp_path>/logs/<name>.log``;
    whatever still runs is SIGKILLed at teardown (a failing test leaves nothing)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    group = Deployment(
        redis_cluster,
        mongo_url,
        mongo_db=mongo_db.name,
        partitions=PARTITIONS,
        log_level="WARNING",
        log_dir=logs,
        cwd=ROOT,
        env={"LEDGER_API_KEYS": ""},
    )
    try:
        yield group
    finally:
        for name in list(group.procs):
            group.kill(name)
        group.close()


def log_tail(deployment: Deployment, chars: int = 3000) -> str:
    """The end of every process's log (for a failing test's message)."""
    assert deployment.log_dir is not None
    parts = []
    for log in sorted(deployment.log_dir.glob("*.log")):
        parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}")
    return "\n".join(parts)


def audit_report(deployment: Deployment) -> dict[str, Any]:
    """Run ``ledger audit --json`` as a process on the deployment's servers; it must
    exit 0 (a clean audit); its report."""
    audit = subprocess.run(
        [sys.executable, "-m", "api", "audit", "--json", "--log-level", "WARNING"],
        cwd=ROOT,
        env=deployment.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr[-3000:]
    report: dict[str, Any] = json.loads(audit.stdout)
    return report
