"""A real Prometheus scraping a real deployment under load: ``ledger serve --workers 2``
(with API keys: Prometheus sends the admin key from a file, as in deploy/), ``ledger
worker``, ``ledger project``, ``ledger scheduler`` and Debian's redis_exporter, all on
loopback, scraped every second with the shipped configuration and alert rules.

Then, through Prometheus' HTTP API: every query of every dashboard panel and every
alert rule evaluates without error, the rules evaluate healthy inside Prometheus, the
key panels (queue depth, processing rate, append rate, projection lag) return data, and
the dashboard's queue variable lists the configured queues. ``promtool check metrics``
accepts a ``/metrics`` scrape of the API taken under the same load, and one of each
process kind's own exporter when ``ledger worker`` has ``--metrics-port``.

Every process is stopped at the end, failed or not: the deployment by its fixture-like
``with``, Prometheus and the exporter by theirs (and all of them die with pytest).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import redis as redis_py
from pymongo.database import Database

from api.dev.deployment import Deployment
from api.dev.embedded import free_port
from api.dev.loadgen import credit_traffic, registrations, user_ids
from ledger.commands import Adjust, Purchase, RegisterUser, Use
from streams import StreamsConfig
from tests.helpers import eventually

from .tools import (
    LOOPBACK,
    ROOT,
    Prometheus,
    dashboard,
    grafana_expr,
    panel_queries,
    run,
    scrape_config,
    tool,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.single_redis("redis_exporter and the memory panels read one redis-server"),
]

ADMIN = "admin-key-for-prometheus-0123456789"
PRODUCER = "producer-key-for-the-load-0123456789"
PARTITIONS = 4
KEY_PANELS = {
    # panel title -> whether some value in the window must be above 0
    "Queue depth": True,
    "Processing rate": True,
    "Append rate": True,
    # projection lag is 0 when the projectors keep up: data, not necessarily > 0
    "Projection lag (time)": False,
    "Redis memory used / maxmemory": True,
}
MAY_BE_EMPTY = {"API 5xx ratio", "5xx by route"}
"""Panels of 5xx answers: the load makes none."""
PROCESS_PANELS = {
    "Worker throughput per process",
    "Events applied by projectors",
    "CPU by process kind",
    "Resident memory (largest process)",
    "Restarts (1 h)",
}
"""Panels on the processes' own metrics (``--metrics-port``)."""
MAXMEMORY = 2 * 1024**3
LOAD_SECONDS = 12.0


@dataclass
class Load:
    """Producer traffic over HTTP until stopped (bounded in count and time)."""

    base: str
    statuses: dict[int, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)

    def run(self) -> None:
        users = user_ids(40, prefix="prom")
        commands = [*registrations(users), *credit_traffic(users, 5000, seed=15)]
        producer = {"Authorization": f"Bearer {PRODUCER}"}
        admin = {"Authorization": f"Bearer {ADMIN}"}  # adjustments are the admin's
        deadline = time.monotonic() + 40
        try:
            with httpx.Client(base_url=self.base, headers=producer, timeout=10) as client:
                for i, command in enumerate(commands):
                    if self.stop.is_set() or time.monotonic() > deadline:
                        return
                    path, body = request_of(command)
                    extra = admin if isinstance(command, Adjust) else None
                    reply = client.post(path, json=body, headers=extra)
                    self.statuses[reply.status_code] = self.statuses.get(reply.status_code, 0) + 1
                    if i % 10 == 0:  # a task no handler knows: fails, retries, dead-letters
                        client.post(
                            "/api/queue/enqueue",
                            json={
                                "queue_name": "high_priority" if i % 20 else "low_priority",
                                "task_type": "unknown_kind",
                                "task_data": {"n": i},
                                "priority": 3 if i % 20 else 1,
                                "delay": 0,
                            },
                        )
                    time.sleep(0.004)
        except BaseException as exc:  # surfaced by the test
            self.errors.append(exc)


def request_of(command: Any) -> tuple[str, dict[str, Any]]:
    """The HTTP path and JSON body of a load generator command."""
    if isinstance(command, RegisterUser):
        return "/api/users", {"user_id": command.user_id, "email": command.email}
    if isinstance(command, Purchase):
        body = {
            "amount": command.amount,
            "currency": "USD",
            "transaction_id": command.transaction_id,
        }
        return f"/api/accounts/{command.user_id}/purchases", body
    if isinstance(command, Use):
        body = {"amount": command.amount, "reason": command.reason}
        return f"/api/accounts/{command.user_id}/usage", body
    assert isinstance(command, Adjust)
    body = {"delta": command.delta, "reason": command.reason}
    return f"/api/accounts/{command.user_id}/adjustments", body


def metrics_port_supported() -> bool:
    """Whether ``ledger worker`` has ``--metrics-port`` (per-process exporters)."""
    done = run([sys.executable, "-m", "api", "worker", "--help"], cwd=ROOT)
    return "--metrics-port" in done.stdout


@dataclass
class Running:
    group: Deployment
    base: str
    processes: dict[str, list[str]]
    """Metrics addresses per compose service (worker, projector, scheduler)."""


@pytest.fixture
def running(
    tmp_path: Path,
    redis: redis_py.Redis,
    redis_url: str,
    mongo_url: str,
    mongo_db: Database[Any],
) -> Iterator[Running]:
    """The ledger's processes on the session's servers; (deployment, API base URL).
    The session's Redis gets a maxmemory (as in production) for the test's length."""
    before = str(redis.config_get("maxmemory")["maxmemory"])
    redis.config_set("maxmemory", MAXMEMORY)
    port = free_port()
    group = Deployment(
        redis_url,
        mongo_url,
        mongo_db=mongo_db.name,
        partitions=PARTITIONS,
        log_level="WARNING",
        log_dir=tmp_path,
        cwd=ROOT,
        new_session=True,  # uvicorn --workers forks: signal the whole group
        env={
            "LEDGER_API_KEYS": f"{ADMIN}:admin,{PRODUCER}:producer",
            "LEDGER_RATE_PER_S": "0",
        },
    )
    base = f"http://{LOOPBACK}:{port}"
    try:
        with group:
            group.start("api", "serve", "--port", str(port), "--workers", "2")
            processes: dict[str, list[str]] = {}
            exporters = metrics_port_supported()

            def metrics(service: str) -> list[str]:
                if not exporters:
                    return []
                address = f"{LOOPBACK}:{free_port()}"
                processes.setdefault(service, []).append(address)
                return ["--metrics-port", address.rpartition(":")[2]]

            for n in (1, 2):
                group.start(
                    f"worker-{n}",
                    "worker",
                    "--max-attempts",
                    "2",
                    "--backoff-ms",
                    "50",
                    *metrics("worker"),
                )
            group.start("project", "project", "--trim-after-ms", "600000", *metrics("projector"))
            group.start("scheduler", "scheduler", *metrics("scheduler"))

            def up() -> bool:
                assert not group.exited(), f"exited: {group.exited()}"
                return httpx.get(f"{base}/health", timeout=2).status_code == 200

            eventually(up, timeout=30, ignoring=(httpx.TransportError,), message="API up")
            yield Running(group, base, processes)
    finally:
        redis.config_set("maxmemory", before)


def test_dashboard_and_rules_evaluate_on_a_live_deployment(
    tmp_path: Path, running: Running, redis_url: str
) -> None:
    group, base = running.group, running.base
    targets = 3 + sum(len(v) for v in running.processes.values())
    may_be_empty = MAY_BE_EMPTY | (set() if running.processes else PROCESS_PANELS)
    key_file = tmp_path / "metrics_key"
    key_file.write_text(ADMIN + "\n")
    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    load = Load(base)
    loader = threading.Thread(target=load.run, name="prometheus-load")
    with Prometheus(prom_dir) as prom:
        exporter_port = free_port()
        prom.spawn(
            [
                tool("prometheus-redis-exporter"),
                f"-web.listen-address={LOOPBACK}:{exporter_port}",
                "-redis-only-metrics",
            ],
            prom_dir / "exporter.log",
        )
        prom.start(
            scrape_config(
                api_target=base.removeprefix("http://"),
                key_file=key_file,
                redis_url=redis_url.removesuffix("/0"),
                exporter=f"{LOOPBACK}:{exporter_port}",
                prometheus=prom.address,
                processes=running.processes,
            )
        )
        loader.start()
        try:
            # every target up (the API with its key, the exporter's /scrape of our Redis)
            def targets_up() -> bool:
                active = prom.api("targets")["activeTargets"]
                down = [(t["labels"]["job"], t["lastError"]) for t in active if t["health"] != "up"]
                assert len(active) == targets and not down, down
                return True

            eventually(targets_up, timeout=20, message="every scrape target up")

            # the load has run long enough for rates over the dashboard's window
            def enough() -> bool:
                rate = 'sum(rate(ledger_appends_total{result="accepted"}[5s]))'
                processed = "max(rate(ledger_queue_processed_total[5s]))"
                return bool(prom.query(f"{rate} > 0")) and bool(prom.query(f"{processed} > 0"))

            eventually(
                enough,
                timeout=LOAD_SECONDS + 15,
                message=lambda: (
                    f"appends and processing seen: {load.statuses} {load.errors} "
                    f"{prom.query('ledger_appends_total')} "
                    f"{prom.query('ledger_queue_processed_total')}"
                ),
            )
            time.sleep(2)  # a couple more scrapes under load

            scrape = httpx.get(
                f"{base}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
            )
        finally:
            load.stop.set()
            loader.join(timeout=15)
        assert not load.errors, load.errors
        assert scrape.status_code == 200
        assert load.statuses.get(201, 0) > 50 and not any(s >= 500 for s in load.statuses), (
            load.statuses
        )

        # promtool check metrics on the exposition the API served under load
        checked = run([tool("promtool"), "check", "metrics"], input=scrape.text)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        for service, addresses in running.processes.items():  # and each process kind's own
            own = httpx.get(f"http://{addresses[0]}/metrics", timeout=10)
            checked = run([tool("promtool"), "check", "metrics"], input=own.text)
            assert own.status_code == 200 and checked.returncode == 0, (
                service,
                checked.stdout + checked.stderr,
            )

        # every panel query evaluates; the key panels return data
        queries = panel_queries(dashboard())
        assert len(queries) >= 20
        empty = []
        for title, expr in queries:
            result = prom.query_range(expr)  # fails the test on any error
            if not result:
                empty.append(title)
            if title in KEY_PANELS:
                assert result, f"key panel {title!r} returned no data: {expr}"
                if KEY_PANELS[title]:
                    best = max(float(v) for s in result for _, v in s["values"])
                    assert best > 0, f"key panel {title!r} stayed at 0: {expr}"
        print(f"{len(queries)} panel queries evaluated; without data: {empty}")
        assert set(empty) <= may_be_empty, f"panels without data: {empty}"

        # the queue variable lists the configured queues
        queues = prom.api("label/queue/values", **{"match[]": "ledger_queue_length"})
        assert sorted(queues) == sorted(q.name for q in StreamsConfig().queues)
        assert "label_values(ledger_queue_length, queue)" in str(dashboard()["templating"])

        # every rule: loaded from deploy/prometheus/alerts.yml, evaluated healthy by
        # Prometheus itself, and its expression answers an instant query
        def rules_evaluated() -> list[dict[str, Any]]:
            groups = prom.api("rules")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            assert rules and all(r.get("lastEvaluation", "").startswith("2") for r in rules)
            assert all(r["health"] == "ok" for r in rules), [
                (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"
            ]
            return rules

        rules = eventually(rules_evaluated, timeout=10, message="rules evaluated")
        shipped = run(
            [tool("promtool"), "check", "rules", str(ROOT / "deploy/prometheus/alerts.yml")]
        )
        assert f"SUCCESS: {len(rules)} rules found" in shipped.stdout
        for rule in rules:
            prom.query(grafana_expr(rule["query"]))
        print(f"{len(rules)} rules evaluated: {[(r['name'], r['state']) for r in rules]}")

        # the Redis memory panel has the exporter's data for our server
        memory = prom.query("redis_memory_used_bytes")
        assert memory and float(memory[0]["value"][1]) > 0

    assert not group.exited(), f"a ledger process died under load: {group.exited()}"
