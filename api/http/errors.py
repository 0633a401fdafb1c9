"""Every error becomes ``{"error": code, "message": text, "field": name?}``.

    400 malformed request (not JSON, wrong content)    413 body or payload too large
    401 no or unknown API key                          415 not application/json
    403 the key's role may not do this                 422 a field breaks a rule
    404 unknown account, task, dead letter             429 rate limited (Retry-After)
    409 conflict (overdraft, duplicate, reused key)    503 Redis or MongoDB unavailable
Anything unexpected is a 500 with a generic message: no stack trace leaves the server.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ledger.errors import (
    Conflict,
    InsufficientCredits,
    LedgerError,
    NotFound,
    ValidationError,
)
from ledger.tasks import PayloadTooLarge
from projections.store import StoreUnavailable
from streams.errors import ConfigError, StreamsError, Unavailable, UnknownDeadLetter

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the edge raises itself (auth, content type, size, rate)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.field, self.headers = field, headers or {}


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "message": message}
    if field is not None:
        body["field"] = field
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers)


def status_of(exc: LedgerError) -> int:
    if isinstance(exc, PayloadTooLarge):
        return 413
    if isinstance(exc, ValidationError):
        return 422
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    return 500


def ledger_error_body(exc: LedgerError) -> dict[str, Any]:
    """The JSON body of a domain error (also used per item in batch results)."""
    body: dict[str, Any] = {"error": exc.code, "message": exc.message}
    if isinstance(exc, ValidationError) and exc.field is not None:
        body["field"] = exc.field
    if isinstance(exc, InsufficientCredits):
        body["balance"] = exc.balance
    return body


async def on_ledger_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LedgerError)
    return JSONResponse(ledger_error_body(exc), status_code=status_of(exc))


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)


async def on_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("dependency unavailable: %s", exc)
    return error_response(503, "unavailable", str(exc) or "a dependency is unavailable",
                          headers={"Retry-After": "1"})


async def on_streams_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, UnknownDeadLetter):
        return error_response(404, "unknown_dead_letter", str(exc))
    if isinstance(exc, ConfigError):  # e.g. this Redis holds another partition count
        log.error("misconfigured: %s", exc)
        return error_response(503, "misconfigured", str(exc))
    return await on_unexpected(request, exc)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return error_response(exc.status_code, codes.get(exc.status_code, "http_error"),
                          str(exc.detail), headers=getattr(exc, "headers", None))


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "the server failed to handle this request")


HANDLERS: dict[Any, Any] = {
    LedgerError: on_ledger_error,
    ApiError: on_api_error,
    Unavailable: on_unavailable,
    StoreUnavailable: on_unavailable,
    StreamsError: on_streams_error,
    HTTPException: on_http_exception,
    Exception: on_unexpected,
}
