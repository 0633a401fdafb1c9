"""Ledger endpoints: appends (atomic, idempotent) and read-model reads.

    POST /api/users                               producer  201 | 409 duplicate_user
    POST /api/accounts/{user_id}/purchases        producer  201 | 404 | 409
    POST /api/accounts/{user_id}/usage            producer  201 | 404 | 409 insufficient_credits
    POST /api/accounts/{user_id}/adjustments      admin     201 | 404 | 409
    POST /api/accounts/{user_id}/holds            producer  201 | 404 | 409 insufficient_credits
                                                            | 409 too_many_holds | 422
    POST /api/accounts/{user_id}/holds/{hold_id}/capture
                                                  producer  201 | 404 unknown_hold
                                                            | 409 hold_not_open | 422
    POST /api/accounts/{user_id}/holds/{hold_id}/release
                                                  producer  201 | 404 | 409 hold_not_open
    GET  /api/accounts/{user_id}/holds            reader    200 (open holds, from Redis) | 404
    POST /api/events:batch                        producer  200 with one result per item
    GET  /api/accounts/{user_id}/balance          reader    200 | 404 | 409 not_yet_projected
    GET  /api/accounts/{user_id}/credit-score     reader    200 | 404 | 409 not_yet_projected
    GET  /api/accounts/{user_id}/events           reader    200 (paged by version) | 404

A repeated ``Idempotency-Key`` (or purchase ``transaction_id``) returns the
first response with ``Idempotent-Replayed: true``; a refused append is not
remembered, so repeating it decides again. ``?min_version=N`` on the balance
waits up to ``wait_ms`` (default 2000, at most 5000) for the projection to
reach N; a version the account has not reached in Redis is answered at once.
The wait holds no thread: it polls the read model with short reads on the pool
and ``asyncio.sleep`` (10 ms, doubling to 250 ms) between them, so waits cannot
starve appends. One API key may have ``WAITERS_PER_KEY`` (16) waits open per
process; one more is answered at once with 429 ``too_many_waits`` and
``Retry-After: 1``.

Holds answer ``{hold_id, event_id, user_id, version, balance, held,
available}``. ``GET …/holds`` reads the open holds from Redis, where the append
script keeps them (the authoritative state: a hold just made is listed, one
just captured is not); a hold past its expiry stays listed, and counted in
``held``, until ``ledger scheduler`` appends its ``hold_expired`` event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, TypeVar

import pymongo
from pymongo.errors import ConnectionFailure, PyMongoError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ledger.commands import Adjust, Capture, Command, Release, parse
from ledger.errors import LedgerError, UnknownAccount, ValidationError
from ledger.money import MAX_CREDITS
from ledger.tasks import Priority
from projections.store import BALANCES, CREDIT_SCORES, EVENTS, StoreUnavailable
from streams.appender import IDEMPOTENCY_KEY_RE, Appended
from streams.times import iso_utc

from .. import metrics
from ..auth import Role, caller, requires
from ..errors import Forbidden, error_body, error_response, status_of
from ..schemas import (
    MAX_BATCH,
    idempotency_key,
    json_object,
    only_fields,
    path_hold,
    path_user,
    query_int,
)
from ..state import AppState, app_state

T = TypeVar("T")

READ_TIMEOUT_S: Final = 2.0
"""Bound on one read-model query (an unreachable MongoDB answers 503 after it)."""
MAX_WAIT_MS: Final = 5000
DEFAULT_WAIT_MS: Final = 2000
MAX_PAGE: Final = 1000
DEFAULT_PAGE: Final = 100
REPLAYED: Final = "Idempotent-Replayed"
POLL_FIRST_S: Final = 0.01
POLL_MAX_S: Final = 0.25
EVENT_FIELDS: Final = (
    "kind",
    "version",
    "at_ms",
    "amount",
    "text",
    "ref",
    "balance_after",
    "purchased_total",
    "used_total",
    "prev_hash",
    "hash",
)
HOLD_EVENT_FIELDS: Final = ("held_total", "hold_amount", "hold_expires_at_ms")
"""Held credits after the event, the credits of the hold it opens or closes, and
the expiry of a hold it opens (0 where none: archived before holds, or no hold)."""


def appended_body(a: Appended) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": a.event_id,
        "user_id": a.user_id,
        "version": a.version,
        "balance": a.balance,
    }
    if a.hold_id:  # a hold event: its hold and what it left held and available
        body.update(hold_id=a.hold_id, held=a.held, available=a.available)
    return body


async def _append(request: Request, command: Command, key: str | None) -> Response:
    state = app_state(request)
    try:
        done = await state.blocking(state.qm.append, command, idempotency_key=key)
    except LedgerError as exc:
        metrics.record_append(exc.code)
        raise
    metrics.record_append("duplicate" if done.duplicate else "accepted")
    headers = {REPLAYED: "true"} if done.duplicate else None
    return JSONResponse(appended_body(done), status_code=201, headers=headers)


async def _path_command(request: Request, kind: str) -> tuple[Command, str | None]:
    user = path_user(request)
    key = idempotency_key(request)
    body = await json_object(request)
    if "user_id" in body:
        raise ValidationError("user_id", "unknown field 'user_id' (the account is in the path)")
    return parse(kind, {**body, "user_id": user}), key


@requires(Role.PRODUCER)
async def register_user(request: Request) -> Response:
    key = idempotency_key(request)
    body = await json_object(request)
    return await _append(request, parse("register_user", body), key)


@requires(Role.PRODUCER)
async def purchase(request: Request) -> Response:
    return await _append(request, *await _path_command(request, "purchase"))


@requires(Role.PRODUCER)
async def usage(request: Request) -> Response:
    return await _append(request, *await _path_command(request, "use"))


@requires(Role.ADMIN)
async def adjustment(request: Request) -> Response:
    return await _append(request, *await _path_command(request, "adjust"))


@requires(Role.PRODUCER)
async def hold(request: Request) -> Response:
    """Reserve ``amount`` credits of the available ones for ``expires_in_s`` seconds."""
    return await _append(request, *await _path_command(request, "hold"))


async def _hold_command(request: Request, kind: str) -> tuple[Command, str | None]:
    user = path_user(request)
    hold_id = path_hold(request)
    key = idempotency_key(request)
    body = await json_object(request, optional=True)
    only_fields(body, (), ("amount",) if kind == "capture" else ())
    command: Command
    if kind == "capture":
        command = Capture(user_id=user, hold_id=hold_id, amount=body.get("amount"))
    else:
        command = Release(user_id=user, hold_id=hold_id)
    return command, key


@requires(Role.PRODUCER)
async def capture(request: Request) -> Response:
    """Use ``amount`` (default: all) of an open hold; the rest is released."""
    return await _append(request, *await _hold_command(request, "capture"))


@requires(Role.PRODUCER)
async def release(request: Request) -> Response:
    """Release the whole of an open hold."""
    return await _append(request, *await _hold_command(request, "release"))


@requires(Role.READER)
async def holds(request: Request) -> Response:
    """The account's open holds, oldest first, with its balance, held and available."""
    user = path_user(request)
    state = app_state(request)

    account = await state.blocking(state.qm.holds_of, user)
    if account is None:
        return JSONResponse(error_body(UnknownAccount(user)), status_code=404)
    return JSONResponse({**account, "holds": [h.as_json() for h in account["holds"]]})


# --- batch ----------------------------------------------------------------------------


def _item(raw: object, is_admin: bool) -> tuple[Command, str | None]:
    """One batch item -> (command, idempotency key); errors name the item's field."""
    if not isinstance(raw, dict):
        raise ValidationError(None, "each event must be a JSON object")
    fields = dict(raw)
    kind = fields.pop("kind", None)
    key = fields.pop("idempotency_key", None)
    if key is not None and (not isinstance(key, str) or not IDEMPOTENCY_KEY_RE.match(key)):
        raise ValidationError(
            "idempotency_key", "idempotency_key must be 1-255 visible ASCII characters"
        )
    if kind is None:
        raise ValidationError("kind", "kind is required")
    command = parse(kind if isinstance(kind, str) else "", fields)
    if isinstance(command, Adjust) and not is_admin:
        raise Forbidden("adjust events need the admin role")
    return command, key


@requires(Role.PRODUCER)
async def batch(request: Request) -> Response:
    """Many appends in one request; each is atomic on its own, results in order."""
    state = app_state(request)
    is_admin = caller(request).role is Role.ADMIN
    body = await json_object(request)
    only_fields(body, ("events",))
    events = body["events"]
    if not isinstance(events, list) or not events:
        raise ValidationError("events", "events must be a non-empty array")
    if len(events) > MAX_BATCH:
        raise ValidationError("events", f"events holds at most {MAX_BATCH} items")
    results: list[dict[str, Any] | None] = [None] * len(events)
    todo: list[tuple[int, Command, str | None]] = []
    for index, raw in enumerate(events):
        try:
            command, key = _item(raw, is_admin)
        except (LedgerError, Forbidden) as exc:
            results[index] = {"index": index, "status": status_of(exc), **error_body(exc)}
            continue
        todo.append((index, command, key))
    if todo:
        outcomes = await state.blocking(
            state.qm.append_batch, [(cmd, Priority.NORMAL, key) for _, cmd, key in todo]
        )
        for (index, _, _), outcome in zip(todo, outcomes, strict=True):
            metrics.record_append(
                outcome.code
                if isinstance(outcome, LedgerError)
                else "duplicate"
                if outcome.duplicate
                else "accepted"
            )
            if isinstance(outcome, LedgerError):
                results[index] = {
                    "index": index,
                    "status": status_of(outcome),
                    **error_body(outcome),
                }
            else:
                results[index] = {
                    "index": index,
                    "status": 201,
                    **appended_body(outcome),
                    "replayed": outcome.duplicate,
                }
    accepted = sum(1 for r in results if r is not None and r["status"] == 201)
    return JSONResponse(
        {"accepted": accepted, "refused": len(events) - accepted, "results": results}
    )


# --- reads ----------------------------------------------------------------------------


def _bounded(fn: Callable[[], T], timeout: float = READ_TIMEOUT_S) -> T:
    """Run a read-model query with a deadline; an unreachable server -> StoreUnavailable."""
    try:
        with pymongo.timeout(timeout):
            return fn()
    except PyMongoError as exc:
        if isinstance(exc, ConnectionFailure) or getattr(exc, "timeout", False):
            raise StoreUnavailable(f"MongoDB is unavailable ({type(exc).__name__})") from None
        raise


def _db(state: AppState) -> Any:
    if state.db is None:
        raise StoreUnavailable("no MongoDB is configured for the read models")
    return state.db


def _iso(value: object) -> object:
    """A read model's datetime as the API shows every time (``iso_utc``, to the ms)."""
    return iso_utc(round(value.timestamp() * 1000)) if isinstance(value, datetime) else value


async def _missing(
    state: AppState, user: str, projected: int = 0, wanted: int | None = None
) -> Response:
    """No (new enough) read-model document: 404 if Redis has no such account, else 409."""
    account = await state.blocking(state.qm.balance, user)
    if account is None:
        return JSONResponse(error_body(UnknownAccount(user)), status_code=404)
    current = int(account["version"])
    if wanted is not None and wanted > current:
        message = f"account {user!r} is at version {current}; {wanted} has not been appended"
    else:
        message = (
            f"the read model of {user!r} is at version {projected}; "
            f"retry, or ask with ?min_version={current}"
        )
    return error_response(
        409, "not_yet_projected", message, version=projected, current_version=current
    )


async def _wait_for_version(
    state: AppState, db: Any, user: str, min_version: int, timeout: float
) -> dict[str, Any] | None:
    """The balance document once its version reaches ``min_version``; None on timeout.

    Each read is a short query on the pool; between them the request sleeps on
    the event loop (10 ms doubling to 250 ms), holding no thread.
    """
    deadline = time.monotonic() + timeout
    delay = POLL_FIRST_S
    while True:
        doc: dict[str, Any] | None = await state.blocking(
            _bounded, lambda: db[BALANCES].find_one({"_id": user})
        )
        left = deadline - time.monotonic()
        if (doc is not None and doc.get("version", 0) >= min_version) or left <= 0:
            return doc
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, POLL_MAX_S)


@requires(Role.READER)
async def balance(request: Request) -> Response:
    user = path_user(request)
    min_version = query_int(request, "min_version", None, 1, MAX_CREDITS)
    wait_ms = query_int(request, "wait_ms", DEFAULT_WAIT_MS, 0, MAX_WAIT_MS)
    state = app_state(request)
    db = _db(state)
    doc = await state.blocking(_bounded, lambda: db[BALANCES].find_one({"_id": user}))
    wanted = min_version or 1
    if doc is None or doc.get("version", 0) < wanted:
        account = await state.blocking(state.qm.balance, user)
        if (
            min_version is not None
            and account is not None
            and int(account["version"]) >= min_version
            and wait_ms
        ):
            with state.waiting(caller(request).identity):  # else 429 too_many_waits
                doc = await _wait_for_version(state, db, user, min_version, wait_ms / 1000)
        if doc is None or doc.get("version", 0) < wanted:
            projected = 0 if doc is None else int(doc.get("version", 0))
            return await _missing(state, user, projected, min_version)
    return _view(user, "balance", doc)


def _view(user: str, figure: str, doc: dict[str, Any]) -> Response:
    """A balances or credit_scores document as the API shows it (a balance with
    ``held`` and ``available``; a document projected before holds existed: 0 held)."""
    body: dict[str, Any] = {"user_id": user, figure: doc[figure]}
    if figure == "balance":
        held = int(doc.get("held", 0))
        body.update(held=held, available=int(doc.get("available", doc["balance"] - held)))
    body.update(
        version=doc["version"],
        purchased_total=doc["purchased_total"],
        used_total=doc["used_total"],
        updated_at=_iso(doc["updated_at"]),
    )
    return JSONResponse(body)


@requires(Role.READER)
async def credit_score(request: Request) -> Response:
    user = path_user(request)
    state = app_state(request)
    db = _db(state)
    doc = await state.blocking(_bounded, lambda: db[CREDIT_SCORES].find_one({"_id": user}))
    if doc is None:
        return await _missing(state, user)
    return _view(user, "score", doc)


@requires(Role.READER)
async def events(request: Request) -> Response:
    """The archive of an account, oldest first, ``limit`` events after ``after_version``."""
    user = path_user(request)
    after = query_int(request, "after_version", 0, 0, MAX_CREDITS)
    limit = query_int(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    assert after is not None and limit is not None
    state = app_state(request)
    db = _db(state)

    def page() -> list[dict[str, Any]]:
        cursor = db[EVENTS].find({"user_id": user, "version": {"$gt": after}})
        return list(cursor.sort("version", 1).limit(limit))

    docs = await state.blocking(_bounded, page)
    if not docs and after == 0:
        missing = await _missing(state, user)
        if missing.status_code == 404:
            return missing
    items = [
        {
            "event_id": d["_id"],
            **{f: d.get(f) for f in EVENT_FIELDS},
            **{f: d.get(f, 0) for f in HOLD_EVENT_FIELDS},
        }
        for d in docs
    ]
    next_after = items[-1]["version"] if len(items) == limit else None
    return JSONResponse({"user_id": user, "events": items, "next_after_version": next_after})


def routes() -> list[BaseRoute]:
    return [
        Route("/api/users", register_user, methods=["POST"]),
        Route("/api/accounts/{user_id}/purchases", purchase, methods=["POST"]),
        Route("/api/accounts/{user_id}/usage", usage, methods=["POST"]),
        Route("/api/accounts/{user_id}/adjustments", adjustment, methods=["POST"]),
        Route("/api/accounts/{user_id}/holds", hold, methods=["POST"]),
        Route("/api/accounts/{user_id}/holds", holds, methods=["GET"]),
        Route("/api/accounts/{user_id}/holds/{hold_id}/capture", capture, methods=["POST"]),
        Route("/api/accounts/{user_id}/holds/{hold_id}/release", release, methods=["POST"]),
        Route("/api/events:batch", batch, methods=["POST"]),
        Route("/api/accounts/{user_id}/balance", balance, methods=["GET"]),
        Route("/api/accounts/{user_id}/credit-score", credit_score, methods=["GET"]),
        Route("/api/accounts/{user_id}/events", events, methods=["GET"]),
    ]
