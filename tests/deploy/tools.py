"""What the deploy tests share: the files under ``deploy/``, Debian's tools, and a
private Prometheus (and redis_exporter) on loopback that stops with the test.

``scripts/system-deps`` installs the tools (``prometheus``, ``promtool``,
``prometheus-redis-exporter``, ``docker-compose``) where it may run apt-get. A
test whose tool is missing fails, naming the Debian package: it is never
skipped, so a missing install step cannot pass unnoticed (as the browser test
without chromium).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlencode

import httpx2 as httpx
import pytest

from api.dev.embedded import free_port
from api.procs import popen_child, stop_children
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "ledger.json"
COMPOSE = DEPLOY / "docker-compose.yml"
LOOPBACK = "127.0.0.1"

PACKAGES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-redis-exporter": "prometheus-redis-exporter",
    "docker-compose": "docker-compose",
    "systemd-analyze": "systemd",
}


def tool(name: str) -> str:
    """The path of ``name``; a failure naming its Debian package when it is missing."""
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(
        f"{name} is not installed (apt-get install {PACKAGES.get(name, name)}; scripts/system-deps)"
    )


def run(argv: Sequence[str], *, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kw
    )


# -- the dashboard -------------------------------------------------------------------------
GRAFANA_VARIABLES = {
    # Grafana fills these in before it sends a query; a window of a few scrapes here
    "$__rate_interval": "5s",
    "$__interval": "1s",
    "$__range": "30s",
    "$queue": ".*",
}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included, rows themselves left out."""
    for panel in board["panels"]:
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana's variables filled in) of every target."""
    out = []
    for panel in panels(board):
        for target in panel.get("targets", []):
            out.append((panel["title"], grafana_expr(target["expr"])))
    return out


def grafana_expr(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    left = re.findall(r"\$\w+", expr)
    assert not left, f"unknown dashboard variables {left} in {expr}"
    return expr


# -- a private Prometheus ------------------------------------------------------------------
PROCESS_SERVICES = ("worker", "projector", "scheduler")
"""The compose services whose processes Prometheus scrapes on their metrics port."""


def scrape_config(
    *,
    api_target: str,
    key_file: Path,
    redis_url: str,
    exporter: str,
    prometheus: str,
    processes: dict[str, list[str]] | None = None,
) -> str:
    """deploy/prometheus/prometheus.yml pointed at loopback processes, scraping and
    evaluating every second. Each edit must find its text exactly once, so a change of
    the shipped file's shape fails here instead of being tested around. ``processes``:
    the metrics addresses of each of ``PROCESS_SERVICES`` (none: scraped nowhere)."""
    text = (PROMETHEUS_DIR / "prometheus.yml").read_text()
    addresses = processes or {}
    edits = [
        ("scrape_interval: 15s", "scrape_interval: 1s"),
        ("evaluation_interval: 15s", "evaluation_interval: 1s"),
        ("\n  - alerts.yml\n", f"\n  - {PROMETHEUS_DIR / 'alerts.yml'}\n"),
        ("credentials_file: /run/secrets/metrics_key", f"credentials_file: {key_file}"),
        (
            "    dns_sd_configs:\n      - names: [api]\n        type: A\n        port: 8000\n"
            "        refresh_interval: 30s\n",
            f'    static_configs:\n      - targets: ["{api_target}"]\n',
        ),
        (
            "".join(f"          - redis://redis-{n}:6379\n" for n in range(1, 7)),
            f"          - {redis_url}\n",
        ),
        ("replacement: redis-exporter:9121", f"replacement: {exporter}"),
        *(
            (
                f"    dns_sd_configs:\n      - names: [{name}]\n        type: A\n"
                "        port: 9400\n        refresh_interval: 30s\n",
                f"    static_configs:\n      - targets: {json.dumps(addresses.get(name, []))}\n",
            )
            for name in PROCESS_SERVICES
        ),
        ('targets: ["localhost:9090"]', f'targets: ["{prometheus}"]'),
    ]
    for old, new in edits:
        assert text.count(old) == 1, f"deploy/prometheus/prometheus.yml: {old!r} not found once"
        text = text.replace(old, new)
    return text


class Prometheus:
    """``prometheus`` on a loopback port with its storage in ``data_dir``; a context
    manager that stops it (and anything started with ``spawn``)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = data_dir / "prometheus.log"

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def spawn(self, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = popen_child(argv, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def start(self, config: str) -> None:
        path = self.data_dir / "prometheus.yml"
        path.write_text(config)
        proc = self.spawn(
            [
                tool("prometheus"),
                f"--config.file={path}",
                f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
                f"--web.listen-address={self.address}",
                "--storage.tsdb.retention.time=1h",
            ],
            self.log,
        )

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited {proc.returncode}: {self.log.read_text()[-2000:]}")
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200

        eventually(ready, timeout=20, ignoring=(httpx.TransportError,), message="prometheus ready")

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` of a successful answer, else the test fails."""
        reply = httpx.get(f"{self.url}/api/v1/{path}?{urlencode(params)}", timeout=10)
        body = reply.json()
        assert reply.status_code == 200 and body.get("status") == "success", (
            f"{path} {params}: {reply.status_code} {body}"
        )
        return body["data"]

    def query_range(self, expr: str, seconds: int = 30) -> list[dict[str, Any]]:
        now = time.time()
        data = self.api(
            "query_range", query=expr, start=f"{now - seconds:.3f}", end=f"{now:.3f}", step="1"
        )
        assert data["resultType"] == "matrix", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else []
        return result

    def stop(self) -> None:
        stop_children(self.procs, timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def values(series: list[dict[str, Any]]) -> list[float]:
    """Every sample value of a range query's result."""
    return [float(v) for s in series for _, v in s.get("values", [])]
