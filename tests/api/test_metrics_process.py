"""``ledger worker|project|scheduler --metrics-port``: each real process serves its
own metrics (``api.http.metrics_process``), and they follow what it did."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import redis as redis_py
from prometheus_client.parser import text_string_to_metric_families

from api.cli import RET_USAGE
from api.dev.deployment import Deployment
from streams import HandlerRegistry, QueueManager, StreamsConfig
from tests.helpers import eventually

pytestmark = pytest.mark.slow  # three real processes

ROOT = Path(__file__).resolve().parents[2]
TASKS = 5
PROCESS_SERIES = ("process_start_time_seconds", "process_resident_memory_bytes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> tuple[str, Samples]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_worker_projector_and_scheduler_serve_their_own_metrics(
    redis: redis_py.Redis, redis_url: str, deployment: Deployment, tmp_path: Path
) -> None:
    qm = QueueManager(
        config=StreamsConfig(redis_url=redis_url, partitions=4), registry=HandlerRegistry()
    )
    try:
        for i in range(TASKS):
            qm.enqueue(
                "default",
                "db",
                {"operation": "insert", "collection": "analytics", "data": {"_id": f"a{i}"}},
            )
        qm.register_user("ann", "ann@example.com")
        qm.purchase("ann", 10, transaction_id="t1")
        # every second; its tasks go to a queue the worker does not serve
        qm.add_schedule("beat", "* * * * * *", "low_priority", "beat", {})
    finally:
        qm.close()
    ports = {name: free_port() for name in ("worker", "project", "scheduler")}
    deployment.start("worker", "worker", "--queues", "default", "--metrics-port",
                     str(ports["worker"]))  # fmt: skip
    deployment.start("project", "project", "--metrics-port", str(ports["project"]))
    deployment.start("scheduler", "scheduler", "--metrics-port", str(ports["scheduler"]))

    def worker_done() -> Samples:
        _, samples = scrape(ports["worker"])
        # the tasks, and the two events (the workers group records them too)
        assert value(samples, "ledger_worker_processed_total") == TASKS + 2
        return samples

    worker = eventually(worker_done, ignoring=(httpx.TransportError,))
    consumers = value(worker, "ledger_worker_consumers")
    assert consumers is not None and consumers >= 1
    assert value(worker, "ledger_worker_forgotten_consumers_total") == 0

    def projected() -> Samples:
        _, samples = scrape(ports["project"])
        for name in ("balances", "credit_scores", "events"):
            assert value(samples, "ledger_projector_applied_total", projection=name) == 2
            # every entry of the streams is delivered to it: tasks (and ticks) too
            seen = value(samples, "ledger_projector_processed_total", projection=name)
            assert seen is not None and seen >= TASKS + 2
        return samples

    projector = eventually(projected, ignoring=(httpx.TransportError,))

    def fired() -> Samples:
        _, samples = scrape(ports["scheduler"])
        ticks = value(samples, "ledger_scheduler_fired_total")
        assert ticks is not None and ticks >= 1
        return samples

    scheduler = eventually(fired, ignoring=(httpx.TransportError,))
    assert value(scheduler, "ledger_scheduler_missing_total") == 0

    for samples in (worker, projector, scheduler):
        for name in PROCESS_SERIES:
            assert value(samples, name), name
        assert not any(n.endswith("_created") for n, _ in samples)
    if shutil.which("promtool"):
        from .test_metrics import promtool_check

        for port in ports.values():
            promtool_check(scrape(port)[0])

    # a port already taken is a usage error, said in one line
    taken = subprocess.run(
        [sys.executable, "-m", "api", "scheduler", "--metrics-port", str(ports["worker"])],
        cwd=ROOT,
        env=deployment.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert taken.returncode == RET_USAGE, taken.stderr
    assert "--metrics-port" in taken.stderr and "cannot listen" in taken.stderr


def test_no_exporter_without_the_option(redis_url: str, tmp_path: Path) -> None:
    """Without --metrics-port nothing listens: the burst worker only works."""
    env: dict[str, Any] = {"REDIS_URL": redis_url, "LEDGER_PARTITIONS": "4"}
    done = subprocess.run(
        [sys.executable, "-m", "api", "worker", "--burst"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "metrics on" not in done.stderr
