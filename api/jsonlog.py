"""Structured logs: one JSON object per line, and a request id on every request.

    {"ts": "2026-11-28T04:12:03.120Z", "level": "INFO", "logger": "api.access",
     "msg": "GET /api/dlq 200", "request_id": "9f2c…", "method": "GET", …}

``ts`` is UTC; ``request_id``, ``event_id`` and ``task_id`` appear when the code
that logs runs inside ``RequestIdMiddleware`` or ``bind(event_id=…)``; fields
passed with ``extra={…}`` are added as they are (if JSON can hold them). The
access line of a request is ``log_access``, an observer of the one request timer
(``api.http.timing``) that also feeds the metrics.

Kept by hand rather than structlog: the formatter and the context are under a
hundred lines, plug into the stdlib ``logging`` every library here already
uses (uvicorn, pymongo, redis-py), and are tested (``tests/api/test_logs.py``).

``configure(level)`` installs the JSON handler on the root logger (the CLI calls
it once at start; run uvicorn with ``log_config=None`` so its loggers propagate
here instead of configuring their own).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streams.times import iso_utc

if TYPE_CHECKING:
    from .http.timing import Timed

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
EVENT_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("event_id", default=None)
TASK_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("task_id", default=None)
_CONTEXT = {"request_id": REQUEST_ID, "event_id": EVENT_ID, "task_id": TASK_ID}

HEADER = "x-request-id"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")

# attributes every LogRecord has: anything else came through ``extra``
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": iso_utc(int(record.created * 1000)),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, var in _CONTEXT.items():
            value = getattr(record, name, None) or var.get()
            if value:
                out[name] = value
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = _jsonable(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def configure(level: str | int = "INFO", stream: IO[str] | None = None) -> logging.Handler:
    """JSON lines on ``stream`` (stderr) for every logger; replaces earlier handlers."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)  # the root's level rules
    # our access line (api.access) carries the request id; uvicorn's would repeat it
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    return handler


@contextmanager
def bind(*, event_id: str | None = None, task_id: str | None = None) -> Iterator[None]:
    """Add ``event_id`` / ``task_id`` to every log line written inside the block."""
    tokens = []
    if event_id is not None:
        tokens.append((EVENT_ID, EVENT_ID.set(event_id)))
    if task_id is not None:
        tokens.append((TASK_ID, TASK_ID.set(task_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


access_log = logging.getLogger("api.access")


def log_access(timed: Timed) -> None:
    """The access line of a finished request (a ``RequestTimer`` observer)."""
    method, path = timed.scope.get("method"), timed.scope.get("path")
    access_log.info(
        "%s %s %d",
        method,
        path,
        timed.status,
        extra={
            "method": method,
            "path": path,
            "status": timed.status,
            "duration_ms": round(timed.seconds * 1000, 2),
        },
    )


class RequestIdMiddleware:
    """Pure ASGI: takes ``X-Request-ID`` (if sane) or makes one, binds it to the
    request's logs and returns it on the response (run the timer inside it, so
    the access line carries the id)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next(
            (v.decode("latin-1") for k, v in scope.get("headers", []) if k == HEADER.encode()), ""
        )
        request_id = given if _VALID_ID.match(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != HEADER.encode()
                ]
                headers.append((HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            REQUEST_ID.reset(token)


__all__ = ["JsonFormatter", "RequestIdMiddleware", "bind", "configure", "log_access"]
