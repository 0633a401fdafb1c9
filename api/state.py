"""What the app holds while it runs: clients and the blocking-call bridge.

The Redis and Mongo clients are the synchronous ones the library uses; every
call into them from a request goes through ``blocking`` so it runs on a worker
thread (a bounded pool) and never blocks the event loop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from pymongo.database import Database

from streams import QueueManager
from streams.connection import RedisClient

from .settings import Settings

P = ParamSpec("P")
T = TypeVar("T")

THREADS = 64


@dataclass(slots=True)
class AppState:
    settings: Settings
    redis: RedisClient
    qm: QueueManager
    db: Database[Any] | None
    limiter: CapacityLimiter

    async def blocking(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking library call on the thread pool."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                              limiter=self.limiter)
