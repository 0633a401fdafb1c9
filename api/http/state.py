"""What the app holds while it runs: clients and the blocking-call bridge.

The Redis and Mongo clients are the synchronous ones the library uses; every
call into them from a request goes through ``blocking`` so it runs on a worker
thread (a bounded pool) and never blocks the event loop.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from pymongo.database import Database
from starlette.requests import HTTPConnection

from projections.store import Document
from streams import QueueManager
from streams.connection import RedisClient

from ..settings import Settings
from .errors import TooManyWaiters

P = ParamSpec("P")
T = TypeVar("T")

THREADS = 64
WAITERS_PER_KEY = 16
"""``?min_version`` waits one API key may have open in one process (beyond: 429)."""
WAITERS = 4 * THREADS
"""… and all keys together."""


@dataclass(slots=True)
class AppState:
    settings: Settings
    redis: RedisClient
    qm: QueueManager
    db: Database[Document] | None
    limiter: CapacityLimiter
    waiters: Counter[str] = field(default_factory=Counter)
    """Open ``?min_version`` waits per caller (rate-limit bucket id); event loop only."""

    @contextmanager
    def waiting(self, who: str) -> Iterator[None]:
        """Hold one of ``who``'s wait slots; ``TooManyWaiters`` if none is free.

        Only touched from the event loop, so no lock is needed.
        """
        if self.waiters[who] >= WAITERS_PER_KEY or self.waiters.total() >= WAITERS:
            raise TooManyWaiters(
                f"at most {WAITERS_PER_KEY} min_version waits may be open "
                "per API key; retry after 1 s"
            )
        self.waiters[who] += 1
        try:
            yield
        finally:
            self.waiters[who] -= 1
            if not self.waiters[who]:
                del self.waiters[who]

    async def blocking(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking library call on the thread pool."""
        return await anyio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), limiter=self.limiter
        )


def app_state(conn: HTTPConnection) -> AppState:
    """The running app's state, as ``create_app``'s lifespan stored it."""
    state: AppState = conn.app.state.ledger
    return state


__all__ = ["THREADS", "WAITERS", "WAITERS_PER_KEY", "AppState", "TooManyWaiters", "app_state"]
