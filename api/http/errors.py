"""Every error becomes ``{"error": code, "message": text, "field": name?}``.

The classes form one tree (drawn in ``ledger.errors``); ``STATUS`` below is the
one table from a class to its HTTP status and the code clients see. The edge's
own refusals (auth, content type, size) are the ``ApiError`` branch, defined here.
Anything unexpected is a 500 with a generic message: no stack trace leaves the server.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ledger.errors import (
    Conflict,
    Error,
    InsufficientCredits,
    LedgerError,
    NotFound,
    ValidationError,
)
from ledger.tasks import PayloadTooLarge
from projections.store import StoreUnavailable
from streams.errors import ConfigError, StreamsError, Unavailable, UnknownDeadLetter

log = logging.getLogger(__name__)

INTERNAL: Final = "internal_error"
UNAVAILABLE: Final = "unavailable"


# -- the edge's own errors --------------------------------------------------------------
class ApiError(Error):
    """A refusal of the edge itself; ``headers`` go on the response."""

    code = "api_error"

    def __init__(
        self, message: str, *, field: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.field = field
        self.headers = dict(headers or {})


class BadRequest(ApiError):
    """The request itself is unreadable (e.g. a non-numeric Content-Length)."""

    code = "bad_request"


class MalformedJson(BadRequest):
    """The body is not UTF-8 JSON the API accepts (NaN, duplicate keys, too deep…)."""

    code = "malformed_json"


class Unauthorized(ApiError):
    """No bearer key, or one the server does not know."""

    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    """The caller's role is below the one the route needs."""

    code = "forbidden"


class BodyTooLarge(ApiError):
    """The body is over the size the edge reads."""

    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    """The body is not declared ``application/json``."""

    code = "unsupported_media_type"


class TooManyWaiters(ApiError):
    """This caller (or the process) already has as many ``?min_version`` waits open as allowed."""

    code = "too_many_waits"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


# -- the one table ----------------------------------------------------------------------
STATUS: Final[Mapping[type[Error], tuple[int, str | None]]] = {
    # class: (status, code clients see; None: the exception's own ``code``)
    LedgerError: (500, None),  # IntegrityError: the log itself is inconsistent
    ValidationError: (422, None),
    PayloadTooLarge: (413, None),
    NotFound: (404, None),
    Conflict: (409, None),
    StreamsError: (500, INTERNAL),  # DecodeError and the like: a bug, not the client's
    Unavailable: (503, UNAVAILABLE),
    ConfigError: (503, "misconfigured"),  # e.g. this Redis holds another partition count
    UnknownDeadLetter: (404, None),
    StoreUnavailable: (503, UNAVAILABLE),
    BadRequest: (400, None),
    Unauthorized: (401, None),
    Forbidden: (403, None),
    BodyTooLarge: (413, None),
    UnsupportedMediaType: (415, None),
    TooManyWaiters: (429, None),
}
"""Looked up along the exception's MRO: the most specific class listed wins."""


def status_and_code(exc: Error) -> tuple[int, str]:
    """The HTTP status and client-facing code of ``exc`` (500 ``internal_error`` if unlisted)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            status, code = STATUS[cls]
            return status, code or exc.code
    return 500, INTERNAL


def status_of(exc: Error) -> int:
    return status_and_code(exc)[0]


def error_body(exc: Error) -> dict[str, Any]:
    """The JSON body of an error (also used per item in batch results)."""
    code = status_and_code(exc)[1]
    if code == INTERNAL:
        return {"error": INTERNAL, "message": "the server failed to handle this request"}
    message = exc.message or str(exc)
    if code == UNAVAILABLE:
        message = message or "a dependency is unavailable"
    body: dict[str, Any] = {"error": code, "message": message}
    field = exc.field if isinstance(exc, ValidationError | ApiError) else None
    if field is not None:
        body["field"] = field
    if isinstance(exc, InsufficientCredits):
        body["balance"] = exc.balance
        body["available"] = exc.available  # balance minus the credits on hold
    return body


def response_for(exc: Error) -> JSONResponse:
    """The response for ``exc`` by ``STATUS`` (outages and misconfigurations are logged)."""
    status, code = status_and_code(exc)
    headers: dict[str, str] | None = None
    if isinstance(exc, ApiError):
        headers = exc.headers or None
    elif code == UNAVAILABLE:
        log.warning("dependency unavailable: %s", exc)
        headers = {"Retry-After": "1"}
    elif code == "misconfigured":
        log.error("misconfigured: %s", exc)
    return JSONResponse(error_body(exc), status_code=status, headers=headers)


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """An error body for an answer that is not an exception (404 unknown_task, 429, …)."""
    body: dict[str, Any] = {"error": code, "message": message}
    if field is not None:
        body["field"] = field
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers)


async def on_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Error)
    if status_and_code(exc)[1] == INTERNAL:
        return await on_unexpected(request, exc)
    return response_for(exc)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    return error_response(
        exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), headers=headers
    )


def allowed_methods(request: Request) -> list[str]:
    """Every method the routes of this path take (Starlette's 405 names only those of
    the first route matching the path, and a path may have one route per method)."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.path_regex.match(request.url.path):
            methods |= set(route.methods or ())
    return sorted(methods)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, INTERNAL, "the server failed to handle this request")


HANDLERS: Final[Mapping[Any, Any]] = {
    Error: on_error,
    HTTPException: on_http_exception,
    Exception: on_unexpected,
}


__all__ = [
    "HANDLERS",
    "STATUS",
    "ApiError",
    "BadRequest",
    "BodyTooLarge",
    "Forbidden",
    "MalformedJson",
    "TooManyWaiters",
    "Unauthorized",
    "UnsupportedMediaType",
    "error_body",
    "error_response",
    "response_for",
    "status_and_code",
    "status_of",
]
