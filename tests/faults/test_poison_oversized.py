"""An oversized task put straight into a stream (bypassing enqueue's size check)
goes to the dead letters; its handler never runs."""

from __future__ import annotations

import pytest
import redis as redis_py
from redis.typing import EncodableT, FieldT

from ledger.tasks import MAX_TASK_BYTES
from streams import HandlerRegistry, QueueManager, StreamsConfig, keys
from streams.codec import pack
from streams.connection import connect
from streams.replies import text

from . import handlers
from .conftest import PARTITIONS


def test_an_oversized_task_entry_is_dead_lettered(
    redis: redis_py.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    registry = HandlerRegistry()
    registry.register("fault_task", handlers.fault_task)
    qm = QueueManager(
        config=StreamsConfig(redis_url=redis_url, partitions=PARTITIONS),
        client=connect(redis_url),
        registry=registry,
    )
    try:
        worker = qm.worker(claim_idle_ms=100)
        fields: dict[FieldT, EncodableT] = {
            "k": "task",
            "id": "big-1",
            "q": "default",
            "ty": "fault_task",
            "d": pack({"ref": "big", "blob": "x" * (4 * MAX_TASK_BYTES)}),
            "t": "1",
        }
        stream = keys.stream(keys.partitions(PARTITIONS)[0], keys.LEVELS_DESC[0])
        entry = text(redis.xadd(stream, fields))
        worker.run_until_idle(timeout=30)
        assert [(d.stream, d.original_id) for d in qm.dead_letters()] == [(stream, entry)]
        assert redis.hget(handlers.RUNS, "big") is None, "the oversized task ran"
    finally:
        qm.close()
