"""``ledger serve --workers 2`` (a real process): every scrape of ``/metrics`` shows
the same totals whichever worker process answers, and they never go backwards,
not even when a worker is SIGKILLed and uvicorn starts another (issue 15).

Before multiprocess mode, 10 scrapes after 20 purchases and 20 health checks
summed to 22, 23, 24, 19, 25, 20, …: each saw the one process that answered.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import redis as redis_py
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from pymongo.database import Database

from api.dev.deployment import Deployment

from .conftest import KEYS, PARTITIONS, auth

pytestmark = pytest.mark.slow  # a real uvicorn with two worker processes

ROOT = Path(__file__).resolve().parents[2]
KEYS_ENV = ",".join(f"{k}:{r}" for k, r in KEYS.items())
PURCHASES = 20
HEALTH_CHECKS = 20
SCRAPES = 10
LIVE_FILE = re.compile(r"^gauge_livesum_(\d+)\.db$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Totals = dict[str, float]


def totals(text: str) -> Totals:
    """What the test compares between scrapes, from ``prometheus_client``'s parser."""
    out: Totals = {"requests": 0, "scrapes": 0, "timed": 0, "accepted": 0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "ledger_http_requests_total":
                out["scrapes" if s.labels["route"] == "/metrics" else "requests"] += s.value
            elif s.name == "ledger_http_request_duration_seconds_count":
                out["timed"] += 0 if s.labels["route"] == "/metrics" else s.value
            elif s.name == "ledger_appends_total" and s.labels["result"] == "accepted":
                out["accepted"] += s.value
            elif s.name in ("ledger_http_processes", "ledger_projection_lag") and s.labels.get(
                "projection"
            ) in (None, "balances"):
                out[s.name] = s.value
    return out


Served = tuple[str, Path, Deployment, list[int]]


@pytest.fixture
def serve(
    redis: redis_py.Redis,
    redis_url: str,
    mongo_url: str,
    mongo_db: Database[Any],
    tmp_path: Path,
) -> Iterator[Callable[[int], Served]]:
    """``serve(workers)`` -> (base url, TMPDIR of the serve, its deployment,
    [responses while starting]); stopped at teardown."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    deployment = Deployment(
        redis_url,
        mongo_url,
        mongo_db=mongo_db.name,
        partitions=PARTITIONS,
        log_level="WARNING",
        env={"LEDGER_API_KEYS": KEYS_ENV, "TMPDIR": str(tmp)},
        cwd=ROOT,
        log_dir=tmp_path,
        new_session=True,  # SIGTERM reaches uvicorn's workers too
    )

    def start(workers: int) -> Served:
        port = free_port()
        proc = deployment.start(
            "api", "serve", "--port", str(port), "--workers", str(workers), "--rate-per-s", "0"
        )
        base = f"http://127.0.0.1:{port}"
        answered = [0]
        deadline = time.monotonic() + 60
        while True:  # poll until it listens, bounded; every answer is a counted request
            assert proc.poll() is None, (tmp_path / "api.log").read_text()
            try:
                status = httpx.get(f"{base}/health", timeout=2).status_code
                answered[0] += 1
                if status == 200 and len(live_pids(tmp)) == workers:
                    return base, tmp, deployment, answered
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)

    try:
        yield start
    finally:
        deployment.stop(30)


def metrics_dirs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("ledger-serve-metrics-*"))


def live_pids(tmp: Path) -> set[int]:
    """The API worker processes that counted themselves in (``ledger_http_processes``)."""
    found: set[int] = set()
    for d in metrics_dirs(tmp):
        for f in os.listdir(d):
            m = LIVE_FILE.match(f)
            if m:
                found.add(int(m.group(1)))
    return found


def requests_in(counter_file: Path) -> float:
    """The requests one process counted (its own file only)."""
    merged = MultiProcessCollector.merge([str(counter_file)])  # type: ignore[no-untyped-call]
    return sum(
        float(s.value)
        for family in merged
        for s in family.samples
        if s.name == "ledger_http_requests_total"
    )


def fresh(base: str, method: str, path: str, **kw: Any) -> httpx.Response:
    """One request on a connection of its own (it may reach either process)."""
    with httpx.Client(base_url=base, timeout=10) as c:
        return c.request(method, path, **kw)


def scrape_fresh(base: str) -> str:
    r = fresh(base, "GET", "/metrics", headers=auth("admin"))
    assert r.status_code == 200, r.text
    return r.text


def test_every_scrape_shows_the_same_totals(serve: Callable[[int], Served]) -> None:
    base, tmp, deployment, answered = serve(2)
    assert len(metrics_dirs(tmp)) == 1
    producer = auth("producer")
    assert (
        fresh(
            base, "POST", "/api/users", json={"user_id": "buyer", "email": "b@x"}, headers=producer
        ).status_code
        == 201
    )

    def buy(i: int) -> int:
        return fresh(
            base,
            "POST",
            "/api/accounts/buyer/purchases",
            json={"amount": 1, "transaction_id": f"t{i}"},
            headers=producer,
        ).status_code

    with ThreadPoolExecutor(8) as pool:  # concurrent connections: both processes answer
        bought = list(pool.map(buy, range(PURCHASES)))
        healthy = list(
            pool.map(lambda _: fresh(base, "GET", "/health").status_code, range(HEALTH_CHECKS))
        )
    assert bought == [201] * PURCHASES and healthy == [200] * HEALTH_CHECKS
    expected = answered[0] + 1 + PURCHASES + HEALTH_CHECKS

    seen: list[Totals] = []
    with httpx.Client(base_url=base, timeout=10) as kept_alive:  # one process, always
        for i in range(SCRAPES):
            if i % 2:
                text = scrape_fresh(base)
            else:
                r = kept_alive.get("/metrics", headers=auth("admin"))
                assert r.status_code == 200
                text = r.text
            seen.append(totals(text))
    requests = [t["requests"] for t in seen]
    assert requests == [expected] * SCRAPES, requests
    assert [t["timed"] for t in seen] == [expected] * SCRAPES
    assert [t["accepted"] for t in seen] == [1 + PURCHASES] * SCRAPES
    scrapes = [t["scrapes"] for t in seen]
    assert scrapes == sorted(scrapes) and scrapes[-1] >= SCRAPES - 1, scrapes
    assert [t["ledger_http_processes"] for t in seen] == [2] * SCRAPES
    # read from Redis once per scrape, not once per process
    assert [t["ledger_projection_lag"] for t in seen] == [1 + PURCHASES] * SCRAPES
    # both processes counted requests (one process answering everything proves nothing)
    per_process = [requests_in(f) for d in metrics_dirs(tmp) for f in d.glob("counter_*.db")]
    assert len(per_process) == 2 and all(per_process), per_process

    if shutil.which("promtool"):
        from .test_metrics import promtool_check

        promtool_check(scrape_fresh(base))

    # a worker SIGKILLed: uvicorn starts another; nothing it counted is lost
    victim = min(live_pids(tmp))
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:  # a scrape forgets the dead process; its replacement counts itself in
        seen.append(totals(scrape_fresh(base)))
        if len(live_pids(tmp) - {victim}) == 2 and seen[-1]["ledger_http_processes"] == 2:
            break
        assert time.monotonic() < deadline, "uvicorn did not replace the killed worker"
        time.sleep(0.2)
    assert all(t["requests"] == expected for t in seen)
    after = [totals(scrape_fresh(base)) for _ in range(4)]
    assert [t["requests"] for t in after] == [expected] * 4
    assert [t["accepted"] for t in after] == [1 + PURCHASES] * 4
    assert [t["ledger_http_processes"] for t in after] == [2] * 4  # the dead one is forgotten
    assert victim not in live_pids(tmp)
    later = [t["scrapes"] for t in seen + after]
    assert later == sorted(later), later

    # SIGTERM: the serve stops cleanly and removes its directory
    proc = deployment.procs["api"]
    deployment.signal("api", signal.SIGTERM)
    assert proc.wait(30) == 0
    assert metrics_dirs(tmp) == []


def test_one_worker_process_counts_in_the_same_way(serve: Callable[[int], Served]) -> None:
    """``--workers 1``: uvicorn serves in the ``ledger serve`` process itself."""
    base, tmp, deployment, answered = serve(1)
    for _ in range(3):
        assert fresh(base, "GET", "/health").status_code == 200
    seen = [totals(scrape_fresh(base)) for _ in range(3)]
    assert [t["requests"] for t in seen] == [answered[0] + 3] * 3
    assert [t["ledger_http_processes"] for t in seen] == [1] * 3
    assert [t["scrapes"] for t in seen] == sorted(t["scrapes"] for t in seen)
    assert len([f for d in metrics_dirs(tmp) for f in d.glob("counter_*.db")]) == 1
    # uvicorn re-raises the SIGTERM it drained on: the directory goes first
    proc = deployment.procs["api"]
    deployment.signal("api", signal.SIGTERM)
    assert proc.wait(30) == -signal.SIGTERM
    assert metrics_dirs(tmp) == []


def test_the_metrics_dir_is_fresh_set_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.cli.serve import MULTIPROC_ENV, metrics_dir

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv(MULTIPROC_ENV, "/left/by/someone/else")
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    with metrics_dir() as path:
        assert os.environ[MULTIPROC_ENV] == path and Path(path).parent == tmp_path
        assert os.listdir(path) == []
        (Path(path) / "counter_1.db").write_bytes(b"x")
    assert not Path(path).exists()
    assert os.environ[MULTIPROC_ENV] == "/left/by/someone/else"
