"""``?min_version`` waits hold no thread and are bounded per API key (issue 9, finding 10).

A real uvicorn server in a thread on the session's Redis and Mongo-wire server; no
projector runs, so every wait lasts its whole ``wait_ms``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx  # what starlette.testclient uses; in the dev extras
import pytest
import redis as redis_py
import uvicorn
from pymongo.database import Database
from starlette.types import ASGIApp, Receive, Scope, Send

from api.http.app import create_app
from api.http.state import THREADS, WAITERS_PER_KEY
from api.settings import Settings
from tests.helpers import eventually

from .conftest import PARTITIONS

pytestmark = pytest.mark.slow  # a real uvicorn with every wait lasting its whole wait_ms

READERS = [f"reader-wait-key-{i:04d}" for i in range(5)]
PRODUCER = "producer-wait-key-0000"
WAIT_MS = 3000
EXTRA = 4  # requests per key beyond the bound


class InFlight:
    """Counts requests inside the app (test-side, so it works on any version of it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.count = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.count -= 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(
    redis: redis_py.Redis, redis_url: str, mongo_url: str, mongo_db: Database[Any]
) -> Iterator[tuple[str, InFlight]]:
    keys = {**{k: "reader" for k in READERS}, PRODUCER: "producer"}
    settings = Settings(
        redis_url=redis_url,
        mongo_url=mongo_url,
        mongo_db=mongo_db.name,
        partitions=PARTITIONS,
        api_keys=keys,
        rate_per_s=0,
    )
    app = InFlight(create_app(settings))
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        limit_concurrency=1000,
        backlog=1024,
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        eventually(
            lambda: srv.started or not thread.is_alive(),
            timeout=30,
            interval=0.02,
            message="uvicorn did not start",
        )
        assert srv.started, "uvicorn exited before it started"
        yield f"http://127.0.0.1:{port}", app
    finally:
        srv.should_exit = True
        thread.join(30)
        assert not thread.is_alive()


def waiting(state: Any) -> bool:
    """Every wait is open: counted as a waiter, or (an app without the bound) every thread
    of the pool is taken."""
    opened = sum(getattr(state, "waiters", {}).values())
    return bool(
        opened >= len(READERS) * WAITERS_PER_KEY or state.limiter.borrowed_tokens >= THREADS
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_waits_do_not_starve_appends_and_are_bounded_per_key(server: tuple[str, InFlight]) -> None:
    base, inflight = server
    with httpx.Client(base_url=base, timeout=30) as client:
        assert (
            client.post(
                "/api/users", json={"user_id": "w", "email": "w@x"}, headers=bearer(PRODUCER)
            ).status_code
            == 201
        )
        assert (
            client.post(
                "/api/accounts/w/purchases",
                json={"amount": 5, "currency": "USD", "transaction_id": "t-1"},
                headers=bearer(PRODUCER),
            ).status_code
            == 201
        )
    waits = len(READERS) * (WAITERS_PER_KEY + EXTRA)
    assert len(READERS) * WAITERS_PER_KEY > THREADS  # more waits than the pool has threads

    async def scenario() -> tuple[list[httpx.Response], float, float]:
        limits = httpx.Limits(max_connections=waits + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
            tasks = [
                asyncio.ensure_future(
                    client.get(
                        "/api/accounts/w/balance",
                        params={"min_version": 2, "wait_ms": WAIT_MS},
                        headers=bearer(key),
                    )
                )
                for key in READERS
                for _ in range(WAITERS_PER_KEY + EXTRA)
            ]
            state = inflight.app.state.ledger  # type: ignore[attr-defined]
            deadline = time.monotonic() + 20
            while not waiting(state):
                assert time.monotonic() < deadline, f"only {inflight.count} requests arrived"
                await asyncio.sleep(0.01)
            append_s = health_s = 0.0
            for n in range(3):  # spread over the first half of the waits (steady state)
                started = time.monotonic()
                appended = await client.post(
                    "/api/accounts/w/usage", json={"amount": 1}, headers=bearer(PRODUCER)
                )
                append_s = max(append_s, time.monotonic() - started)
                assert appended.status_code == 201, appended.text
                started = time.monotonic()
                assert (await client.get("/health")).status_code == 200
                health_s = max(health_s, time.monotonic() - started)
                if n < 2:
                    await asyncio.sleep(0.4)
            return list(await asyncio.gather(*tasks)), append_s, health_s

    responses, append_s, health_s = asyncio.run(scenario())
    assert append_s < 1.0, f"an append took {append_s:.2f} s behind {waits} waits"
    assert health_s < 1.0, f"/health took {health_s:.2f} s"
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(429) == len(READERS) * EXTRA, statuses
    assert statuses.count(409) == len(READERS) * WAITERS_PER_KEY, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["Retry-After"] == "1" and refused.json()["error"] == "too_many_waits"
    waited = next(r for r in responses if r.status_code == 409)
    assert waited.json()["error"] == "not_yet_projected"
