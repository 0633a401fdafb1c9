"""One timing wrapper for every HTTP request, feeding the access log and the metrics.

``RequestTimer`` is pure ASGI: it starts one clock, notes the status the
response starts with (500 when none is sent, e.g. an exception escaped), and
once the request is over hands a ``Timed`` to each observer in turn. Observers
run inside the request's context, so a log line they write carries its request id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass(frozen=True, slots=True)
class Timed:
    """A finished HTTP request: its ASGI scope, the status it got, how long it took."""

    scope: Scope
    status: int
    seconds: float


Observer = Callable[[Timed], None]


class RequestTimer:
    """Pure ASGI: time each HTTP request once and tell every observer."""

    def __init__(self, app: ASGIApp, observers: Sequence[Observer] = ()) -> None:
        self.app = app
        self.observers = tuple(observers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            timed = Timed(scope, status, time.perf_counter() - started)
            for observe in self.observers:
                observe(timed)


__all__ = ["Observer", "RequestTimer", "Timed"]
