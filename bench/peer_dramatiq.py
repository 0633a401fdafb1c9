"""Dramatiq's side of ``bench.peers``: the same HINCRBY actor on a RedisBroker.

    dramatiq bench.peer_dramatiq --processes 2 --threads 8

``BENCH_DRAMATIQ_URL`` is the broker (a separate DB number of the private
redis-server); ``BENCH_REDIS_URL``/``BENCH_SUM_KEY`` where the actor writes.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.peer_handlers import record

URL = os.environ.get("BENCH_DRAMATIQ_URL", "redis://127.0.0.1:6379/1")
SUM_KEY = os.environ.get("BENCH_SUM_KEY", "bench:sum:dramatiq")
broker = RedisBroker(url=URL)
dramatiq.set_broker(broker)


# dramatiq is Any to mypy (see [tool.mypy] overrides), so its decorator is untyped
@dramatiq.actor(queue_name="bench", max_retries=0)  # type: ignore[untyped-decorator]
def hincr(user: str, amount: int, tag: str | None = None) -> None:
    record(user, amount, tag, SUM_KEY)
