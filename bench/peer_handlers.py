"""Handlers the benchmarks' ledger workers import (``ledger worker --import bench.peer_handlers``).

``hincr``: one HINCRBY of ``amount`` into the per-user hash ``BENCH_SUM_KEY`` (the
peers' workload); with a ``tag`` it also records the done time (ms) under that
tag in ``<BENCH_SUM_KEY>:done``, in the same round trip. ``noop``: nothing.
``BENCH_REDIS_URL`` is where the handler writes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import redis
from redis.client import Pipeline

from streams import default_registry
from streams.handlers import DBManager

_client: redis.Redis | None = None
SUM_KEY = os.environ.get("BENCH_SUM_KEY", "bench:sum:ledger")


def client() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _client


def record(user: str, amount: int, tag: str | None, key: str) -> None:
    """The workload both systems run: HINCRBY, plus the done time when tagged."""
    if tag is None:
        client().hincrby(key, user, amount)
        return
    pipe = client().pipeline(transaction=False)
    pipe.hincrby(key, user, amount)
    mark_done(pipe, key, tag)
    pipe.execute()


def mark_done(pipe: Pipeline, key: str, tag: str) -> None:
    """Record now (ms, to the microsecond) as the done time of ``tag``, in ``pipe``."""
    pipe.hset(f"{key}:done", tag, f"{time.time() * 1000:.3f}")


def hincr(data: Mapping[str, Any], db_manager: DBManager) -> bool:
    record(str(data["user"]), int(data["amount"]), data.get("tag"), SUM_KEY)
    return True


def noop(data: Mapping[str, Any], db_manager: DBManager) -> bool:
    return True


default_registry.register("hincr", hincr)
default_registry.register("noop", noop)
