"""The dashboard in a real headless Chromium against a real uvicorn server.

Debian's ``chromium`` driven by Playwright (``executable_path``; no browser
download). If Chromium is missing the test fails: it is not skipped.
"""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
import uvicorn
from playwright.sync_api import Page, sync_playwright
from pymongo.database import Database

from api.http import metrics
from api.http.app import create_app
from api.settings import Settings
from projections.runner import project_until_idle
from streams import HandlerRegistry, QueueManager, RetryPolicy, StreamsConfig
from streams.connection import connect
from tests.helpers import eventually

from .conftest import KEYS, PARTITIONS

pytestmark = pytest.mark.browser  # Debian's chromium via Playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN_KEY = next(k for k, r in KEYS.items() if r == "admin")
WAIT_MS = 10_000  # the page polls every 2 s


@pytest.fixture
def base_url(
    redis: redis_py.Redis, redis_url: str, mongo_url: str, mongo_db: Database[Any]
) -> Iterator[str]:
    """A uvicorn server with the app (and its middleware) on a free loopback port."""
    app = metrics.instrument(
        create_app(
            Settings(
                redis_url=redis_url,
                mongo_url=mongo_url,
                mongo_db=mongo_db.name,
                partitions=PARTITIONS,
                api_keys=KEYS,
            )
        )
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", ws="none", http="h11")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    eventually(
        lambda: server.started or not thread.is_alive(),
        timeout=15,
        interval=0.02,
        message="uvicorn did not start",
    )
    assert server.started, "uvicorn exited before it started"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture
def page() -> Iterator[Page]:
    assert shutil.which(CHROMIUM), "Debian's chromium is not installed (apt-get install chromium)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 1000})
        finally:
            browser.close()


@pytest.fixture
def qm(redis_url: str) -> Iterator[QueueManager]:
    registry = HandlerRegistry()
    registry.register("work", lambda data, db: True)
    manager = QueueManager(
        config=StreamsConfig(redis_url=redis_url, partitions=PARTITIONS),
        client=connect(redis_url),
        registry=registry,
    )
    try:
        yield manager
    finally:
        manager.close()


def wait_shown(page: Page, pairs: dict[str, str]) -> None:
    """Wait until each element (by id) shows its value (``data-value``)."""
    page.wait_for_function(
        "(pairs) => Object.entries(pairs).every(([id, v]) =>"
        " document.getElementById(id)?.dataset.value === v)",
        arg=pairs,
        timeout=WAIT_MS,
    )


def test_dashboard_renders_follows_the_queues_and_requeues(
    base_url: str, page: Page, qm: QueueManager, mongo_db: Database[Any], tmp_path: Path
) -> None:
    # without a key the page says it needs one
    page.goto(f"{base_url}/dashboard")
    page.wait_for_function(
        "() => document.getElementById('status').textContent.includes('needs an admin API key')",
        timeout=WAIT_MS,
    )
    # with #key= it takes the key, hides it from the address bar and goes live
    page.goto(f"{base_url}/dashboard#key={ADMIN_KEY}")
    page.wait_for_function("() => window.ledgerDashboard.polls >= 1", timeout=WAIT_MS)
    assert page.evaluate("location.hash") == ""
    assert page.evaluate("sessionStorage.getItem('ledger.apiKey')") == ADMIN_KEY
    assert page.text_content("#status") == "live"
    wait_shown(page, {"backlog-default": "0", "processed-default": "0", "dead-count": "0"})

    # tasks flow in: they wait for the workers, and for the projectors (which skip them)
    for i in range(5):
        qm.enqueue("default", "work", {"n": i})
    doomed = qm.enqueue("high_priority", "nobody_handles_this", {"x": 1})
    after_doomed = qm.enqueue("default", "work", {"n": "after"}, depends_on=[doomed])
    qm.add_schedule("nightly", "0 3 * * *", "default", "work", {"n": "nightly"})
    wait_shown(page, {"backlog-default": "5", "backlog-high_priority": "1", "waiting-default": "1"})
    waits_for = page.text_content(f"#waiting tr[data-task='{after_doomed}'] td:nth-child(4)")
    assert waits_for == f"{doomed} (of 1)"
    assert page.text_content("#schedules tr[data-schedule='nightly'] td:nth-child(2)") == (
        "0 3 * * *"
    )
    queued_chart = page.evaluate("document.getElementById('chart-backlog').toDataURL()")
    lag = page.text_content("#projections tr[data-projection='balances'] td:nth-child(3)")
    assert lag == "6"  # not yet delivered to the projector

    qm.worker(retry=RetryPolicy(max_attempts=1)).run_until_idle()
    project_until_idle(qm.redis, PARTITIONS, mongo_db)
    wait_shown(
        page,
        {
            "backlog-default": "0",
            "processed-default": "5",
            "backlog-high_priority": "0",
            "dead-count": "1",
            "waiting-default": "0",  # cancelled with its dead parent
        },
    )
    page.wait_for_selector(f"#waiting tr[data-task='{after_doomed}']", state="detached")
    page.wait_for_function(
        '() => document.querySelector("#projections tr[data-projection='
        "'balances'] td:nth-child(3)\").textContent === '0'",
        timeout=WAIT_MS,
    )
    # the charts drew both moments: the backlog series went 5 -> 0
    series = page.evaluate("window.ledgerDashboard.samples.map(s => s.backlog.default)")
    assert 5 in series and series[-1] == 0 and series.index(5) < len(series) - 1
    assert page.evaluate("document.getElementById('chart-backlog').toDataURL()") != queued_chart
    rates = page.evaluate("window.ledgerDashboard.samples.map(s => s.rate.default)")
    assert any(r is not None and r > 0 for r in rates)  # processing showed as a rate

    [row_id] = page.eval_on_selector_all(
        "#deadletters tr[data-id]", "rows => rows.map(r => r.dataset.id)"
    )
    [dead] = qm.dead_letters()
    assert dead.id == row_id and dead.task_id == doomed
    assert page.text_content(f"#deadletters tr[data-id='{row_id}'] td:nth-child(4)") == doomed
    for path in (tmp_path / "dashboard.png", Path("/tmp/dashboard.png")):
        page.screenshot(path=str(path), full_page=True)
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000

    # Requeue: the dead letter goes and the task is queued again
    page.click(f"button.requeue[data-id='{row_id}']")
    wait_shown(page, {"dead-count": "0"})
    page.wait_for_selector("#deadletters tr[data-id]", state="detached", timeout=WAIT_MS)
    assert "Requeued " + row_id in (page.text_content("#toast") or "")
    assert qm.dead_letters() == []
    status = qm.get_task_status(doomed)
    assert status is not None and status["status"] == "queued"
    wait_shown(page, {"backlog-high_priority": "1"})
