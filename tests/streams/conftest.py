"""Fixtures for the stream engine: a QueueManager on the session's real Redis."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymongo.database import Database

from api.dev.deployment import Deployment
from ledger.tasks import DEFAULT_COLLECTIONS
from projections.store import MongoDBManager
from streams import HandlerRegistry, QueueManager, RetryPolicy, StreamsConfig, Worker
from streams.connection import RedisClient, connect

PARTITIONS = 4


@pytest.fixture
def config(redis_url: str) -> StreamsConfig:
    return StreamsConfig(redis_url=redis_url, partitions=PARTITIONS)


@pytest.fixture
def registry() -> HandlerRegistry:
    return HandlerRegistry()


@pytest.fixture
def qm(
    redis: RedisClient, config: StreamsConfig, registry: HandlerRegistry, mongo_db: Database[Any]
) -> Iterator[QueueManager]:
    manager = QueueManager(
        config=config,
        client=connect(config.redis_url),
        db=MongoDBManager(mongo_db, DEFAULT_COLLECTIONS),
        registry=registry,
    )
    try:
        yield manager
    finally:
        manager.close()


@pytest.fixture
def spawn_worker(deployment: Deployment) -> Callable[..., subprocess.Popen[bytes]]:
    """A real ``ledger worker`` importing ``handlers`` (the crash tests' by default),
    one consumer, ``--claim-idle-ms 500``; ``extra`` arguments come last (an option
    given again wins)."""

    def spawn(
        *extra: str, handlers: str = "tests.streams.crash_handlers"
    ) -> subprocess.Popen[bytes]:
        return deployment.start(
            f"worker-{len(deployment.procs)}",
            "worker",
            "--import",
            handlers,
            "--concurrency",
            "1",
            "--claim-idle-ms",
            "500",
            *extra,
        )

    return spawn


@pytest.fixture
def make_worker(qm: QueueManager) -> Callable[..., Worker]:
    """Workers with quick retries; tests override what they need."""

    def make(**overrides: Any) -> Worker:
        opts: dict[str, Any] = dict(
            retry=RetryPolicy(max_attempts=3, base_ms=20, max_ms=200),
            claim_idle_ms=1000,
            reclaim_every_ms=10,
            block_ms=50,
        )
        opts.update(overrides)
        return qm.worker(**opts)

    return make
