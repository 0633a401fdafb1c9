"""``GET /openapi.json``: an OpenAPI 3.1 document of what the server really does.

Limits and patterns come from the same constants the validators use
(``ledger.commands``, ``ledger.money``, ``ledger.tasks``, ``api.schemas``), and
``tests/api/test_openapi.py`` checks that every mounted route is documented and
every documented path is mounted; the fuzz test validates real responses
against these schemas. Only operations whose route is mounted are listed.
"""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ledger.commands import (
    CURRENCY_PATTERN,
    HOLD_ID_PATTERN,
    MAX_EMAIL,
    MAX_HOLD_EXPIRY_S,
    MAX_REASON,
    TRANSACTION_ID_PATTERN,
    USER_ID_PATTERN,
)
from ledger.money import MAX_CREDITS
from ledger.tasks import MAX_DELAY_SECONDS, NAME_PATTERN
from streams.dependencies import MAX_PARENTS, TASK_ID_PATTERN
from streams.schedules import MAX_CRON, MAX_TIMEZONE, NAME_RE
from streams.status import TASK_STATUSES

from .routes.ledger import DEFAULT_PAGE, DEFAULT_WAIT_MS, MAX_PAGE, MAX_WAIT_MS
from .schemas import MAX_BATCH, MAX_BODY_BYTES
from .state import app_state

Schema = dict[str, Any]

NOT_TEXT: Final = r"\x00-\x1f\x7f"
"""What no text field holds: control characters (``ledger.commands.CONTROL_RE``)."""
SPACE: Final = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
"""Whitespace as the server sees it (Python's ``str.isspace``, which ``strip`` uses),
spelled out: ECMA-262's ``\\s`` differs (it has U+FEFF and lacks U+0085, U+001C-1F)."""
TEXT_PATTERN: Final = rf"^[^{NOT_TEXT}]*$"
EMAIL_PATTERN: Final = rf"^[^@{SPACE}{NOT_TEXT}]+@[^@{SPACE}{NOT_TEXT}]+$"
IDEMPOTENCY_PATTERN: Final = r"^[\x21-\x7e]{1,255}$"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(
    required: dict[str, Schema], optional: dict[str, Schema] | None = None, *, closed: bool = True
) -> Schema:
    schema: Schema = {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
    }
    if closed:
        schema["additionalProperties"] = False
    return schema


USER_ID: Final = {"type": "string", "pattern": USER_ID_PATTERN}
WHOLE: Final = "a JSON integer literal: 26.0 or 2.6e1 is refused (422), as money is never a float"
AMOUNT: Final = {"type": "integer", "minimum": 1, "maximum": MAX_CREDITS, "description": WHOLE}
DELTA: Final = {
    "type": "integer",
    "minimum": -MAX_CREDITS,
    "maximum": MAX_CREDITS,
    "not": {"const": 0},
    "description": WHOLE,
}
REASON: Final = {"type": "string", "maxLength": MAX_REASON, "pattern": TEXT_PATTERN}
ADJUST_REASON: Final = {
    **REASON,
    "minLength": 1,
    "pattern": rf"^[^{NOT_TEXT}]*[^{SPACE}{NOT_TEXT}][^{NOT_TEXT}]*$",
}
EMAIL: Final = {"type": "string", "maxLength": MAX_EMAIL, "pattern": EMAIL_PATTERN}
CURRENCY: Final = {"type": "string", "pattern": CURRENCY_PATTERN}
TRANSACTION_ID: Final = {"type": "string", "pattern": TRANSACTION_ID_PATTERN}
VERSION: Final = {"type": "integer", "minimum": 0}
CREDITS: Final = {"type": "integer", "minimum": 0, "maximum": MAX_CREDITS}
WHEN: Final = {"type": ["string", "null"]}
NAME: Final = {"type": "string", "pattern": NAME_PATTERN}
DEPLOYMENT: Final = "x-deployment"
"""Marks a schema the served document fills in from the deployment's configuration
(``for_deployment``): "queue" (the configured queue names), "max-hold-expiry"."""
QUEUE: Final = {**NAME, DEPLOYMENT: "queue"}
TASK_ID: Final = {"type": "string", "pattern": f"^{TASK_ID_PATTERN}$"}
IDEM_ITEM: Final = {"type": "string", "pattern": IDEMPOTENCY_PATTERN}
SCHEDULE_NAME: Final = {"type": "string", "pattern": f"^{NAME_RE.pattern}$"}
HOLD_ID: Final = {"type": "string", "pattern": HOLD_ID_PATTERN}
EXPIRES_IN: Final = {
    "type": "integer",
    "minimum": 1,
    "maximum": MAX_HOLD_EXPIRY_S,
    DEPLOYMENT: "max-hold-expiry",
    "description": "seconds until the scheduler releases the hold; at most the deployment's "
    "LEDGER_MAX_HOLD_EXPIRY_S (default 604800, 7 days), else 422; a JSON integer literal "
    "(60.0 is refused)",
}
HOLD_FIELDS: Final[dict[str, Schema]] = {"hold_id": HOLD_ID, "held": CREDITS, "available": CREDITS}


def _kind(kind: str, required: dict[str, Schema], optional: dict[str, Schema]) -> Schema:
    return obj(
        {"kind": {"const": kind}, "user_id": USER_ID, **required},
        {**optional, "idempotency_key": IDEM_ITEM},
    )


SCHEMAS: Final[dict[str, Schema]] = {
    "Error": obj(
        {"error": {"type": "string"}, "message": {"type": "string"}},
        {
            "field": {"type": ["string", "null"]},
            "balance": {"type": "integer"},
            "available": {"type": "integer"},
            "version": VERSION,
            "current_version": VERSION,
        },
    ),
    "RegisterUser": obj({"user_id": USER_ID, "email": EMAIL}),
    "Purchase": obj({"amount": AMOUNT, "transaction_id": TRANSACTION_ID}, {"currency": CURRENCY}),
    "Use": obj({"amount": AMOUNT}, {"reason": REASON}),
    "Adjust": obj({"delta": DELTA, "reason": ADJUST_REASON}),
    "Appended": obj(
        {"event_id": {"type": "string"}, "user_id": USER_ID, "version": VERSION, "balance": CREDITS}
    ),
    "Hold": obj({"amount": AMOUNT, "expires_in_s": EXPIRES_IN}, {"reason": REASON}),
    "Capture": obj(
        {},
        {
            "amount": {
                **AMOUNT,
                "description": "credits to use, at most the held amount (default: all); "
                "the rest is released in the same event",
            }
        },
    ),
    "Release": obj({}),
    "HoldAppended": obj(
        {
            "event_id": {"type": "string"},
            "user_id": USER_ID,
            "version": VERSION,
            "balance": CREDITS,
            **HOLD_FIELDS,
        }
    ),
    "OpenHolds": obj(
        {
            "user_id": USER_ID,
            "version": VERSION,
            "balance": CREDITS,
            "held": CREDITS,
            "available": CREDITS,
            "holds": {
                "type": "array",
                "items": obj(
                    {
                        "hold_id": HOLD_ID,
                        "amount": AMOUNT,
                        "reason": {"type": "string"},
                        "created_at": WHEN,
                        "expires_at": WHEN,
                        "expires_at_ms": {"type": "integer"},
                    }
                ),
            },
        }
    ),
    "BatchItem": {
        "anyOf": [
            _kind("register_user", {"email": EMAIL}, {}),
            _kind(
                "purchase",
                {"amount": AMOUNT, "transaction_id": TRANSACTION_ID},
                {"currency": CURRENCY},
            ),
            _kind("use", {"amount": AMOUNT}, {"reason": REASON}),
            _kind("adjust", {"delta": DELTA, "reason": ADJUST_REASON}, {}),
            _kind(
                "hold",
                {"amount": AMOUNT, "expires_in_s": EXPIRES_IN},
                {"reason": REASON},
            ),
            _kind("capture", {"hold_id": HOLD_ID}, {"amount": AMOUNT}),
            _kind("release", {"hold_id": HOLD_ID}, {}),
        ]
    },
    "BatchRequest": obj(
        {
            "events": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_BATCH,
                "items": {
                    "description": "one append, a BatchItem; each item is checked on its own: "
                    "one that is not a valid BatchItem (not even an object) gets its 4xx in "
                    "results, and the others still run",
                    "x-item-schema": "#/components/schemas/BatchItem",
                },
            }
        }
    ),
    "BatchResult": obj(
        {
            "accepted": {"type": "integer", "minimum": 0},
            "refused": {"type": "integer", "minimum": 0},
            "results": {
                "type": "array",
                "items": {
                    "anyOf": [
                        obj(
                            {
                                "index": VERSION,
                                "status": {"const": 201},
                                "event_id": {"type": "string"},
                                "user_id": USER_ID,
                                "version": VERSION,
                                "balance": CREDITS,
                                "replayed": {"type": "boolean"},
                            },
                            HOLD_FIELDS,
                        ),
                        obj(
                            {
                                "index": VERSION,
                                "status": {"type": "integer", "minimum": 400, "maximum": 499},
                                "error": {"type": "string"},
                                "message": {"type": "string"},
                            },
                            {
                                "field": {"type": ["string", "null"]},
                                "balance": {"type": "integer"},
                                "available": {"type": "integer"},
                            },
                        ),
                    ]
                },
            },
        }
    ),
    "Balance": obj(
        {
            "user_id": USER_ID,
            "balance": CREDITS,
            "held": {**CREDITS, "description": "the sum of the open credit holds"},
            "available": {**CREDITS, "description": "balance - held: what may be spent or held"},
            "version": VERSION,
            "purchased_total": CREDITS,
            "used_total": CREDITS,
            "updated_at": WHEN,
        }
    ),
    "CreditScore": obj(
        {
            "user_id": USER_ID,
            "score": {"type": "integer"},
            "version": VERSION,
            "purchased_total": CREDITS,
            "used_total": CREDITS,
            "updated_at": WHEN,
        }
    ),
    "EventsPage": obj(
        {
            "user_id": USER_ID,
            "next_after_version": {"type": ["integer", "null"]},
            "events": {
                "type": "array",
                "items": obj(
                    {
                        "event_id": {"type": "string"},
                        "kind": {
                            "enum": [
                                "user_registered",
                                "credits_purchased",
                                "credits_used",
                                "credits_adjusted",
                                "credits_held",
                                "hold_captured",
                                "hold_released",
                                "hold_expired",
                            ]
                        },
                        "version": VERSION,
                        "at_ms": {"type": "integer"},
                        "amount": {"type": "integer"},
                        "text": {"type": "string"},
                        "ref": {"type": "string"},
                        "balance_after": CREDITS,
                        "purchased_total": CREDITS,
                        "used_total": CREDITS,
                        "prev_hash": {"type": "string"},
                        "hash": {"type": "string"},
                        "held_total": CREDITS,
                        "hold_amount": CREDITS,
                        "hold_expires_at_ms": {"type": "integer", "minimum": 0},
                    }
                ),
            },
        }
    ),
    "Enqueue": obj(
        {
            "queue_name": QUEUE,
            "task_type": NAME,
            "task_data": {"type": "object", "propertyNames": {"not": {"pattern": "^\\$"}}},
        },
        {
            "priority": {"type": "integer", "enum": [1, 2, 3, 4]},
            "delay": {"type": "number", "minimum": 0, "maximum": MAX_DELAY_SECONDS},
            "depends_on": {
                "type": "array",
                "maxItems": MAX_PARENTS,
                "items": TASK_ID,
                "description": "task ids that must complete first (the task waits until "
                "then; a parent that fails or is cancelled cancels it); a delay counts "
                "from the release",
            },
        },
    ),
    "TaskAccepted": obj(
        {
            "task_id": {"type": "string"},
            "queue_name": NAME,
            "status": {"enum": ["queued", "scheduled", "waiting", "cancelled"]},
        }
    ),
    "TaskStatus": obj(
        {
            "task_id": {"type": "string"},
            "status": {"enum": list(TASK_STATUSES)},
            "attempts": VERSION,
            "queue_name": NAME,
            "task_type": NAME,
            "enqueued_at": WHEN,
            "started_at": WHEN,
            "finished_at": WHEN,
            "last_error": {"type": ["string", "null"]},
            "depends_on": {"type": "array", "items": {"type": "string"}},
            "waiting_for": {"type": "array", "items": {"type": "string"}},
        }
    ),
    "TaskCancelled": obj(
        {"task_id": {"type": "string"}, "status": {"enum": ["cancelled"]}},
    ),
    "QueueStat": obj(
        {
            "queue_name": NAME,
            "priority": {"type": "string"},
            "length": VERSION,
            "pending": VERSION,
            "lag": {"type": ["integer", "null"]},
            "consumers": VERSION,
            "processed": VERSION,
            "failed": VERSION,
            "retried": VERSION,
            "dead": VERSION,
            "waiting": VERSION,
            "cancelled": VERSION,
            "released": VERSION,
            "dependents_cancelled": VERSION,
            "rate_per_s": {"type": "number"},
            "latency_ms": {"type": "object"},
        }
    ),
    "QueueStats": {"type": "object", "additionalProperties": ref("QueueStat")},
    "SchedulePut": obj(
        {
            "cron": {"type": "string", "minLength": 1, "maxLength": MAX_CRON},
            "queue_name": QUEUE,
            "task_type": NAME,
            "task_data": {"type": "object", "propertyNames": {"not": {"pattern": "^\\$"}}},
        },
        {
            "priority": {"type": "integer", "enum": [1, 2, 3, 4]},
            "timezone": {"type": "string", "minLength": 1, "maxLength": MAX_TIMEZONE},
        },
    ),
    "Schedule": obj(
        {
            "name": SCHEDULE_NAME,
            "cron": {"type": "string"},
            "timezone": {"type": "string"},
            "queue_name": NAME,
            "task_type": NAME,
            "task_data": {"type": "object"},
            "priority": {"type": "integer", "enum": [1, 2, 3, 4]},
            "next_run_at": WHEN,
            "last_run_at": WHEN,
            "last_task_id": {"type": ["string", "null"]},
            "created_at": WHEN,
            "updated_at": WHEN,
        }
    ),
    "Schedules": obj({"schedules": {"type": "array", "items": ref("Schedule")}}),
    "ExampleCreditPurchase": obj({}, {"user_id": USER_ID, "amount": AMOUNT}),
    "ExampleUserRegistration": obj({}, {"user_id": USER_ID, "email": EMAIL}),
    "ExampleCreditUpdate": obj({}, {"user_id": USER_ID, "delta": DELTA}),
    "Any": {},
}

ERRORS: Final = {
    400: "malformed JSON (not UTF-8, NaN, duplicate keys, nested deeper than allowed)",
    401: "no or unknown API key",
    403: "the key's role may not do this",
    404: "unknown account, hold, task, queue or schedule",
    409: "conflict: overdraft (with the balance and available credits), duplicate user, "
    "reused key, limit, too many open holds, a hold no longer open, "
    "or not yet projected (with version and current_version)",
    413: f"body larger than {MAX_BODY_BYTES} bytes (or task_data too large)",
    415: "Content-Type is not application/json",
    422: "a field breaks a rule; `field` names it",
    429: "rate limited; see Retry-After",
    503: "Redis or MongoDB unavailable; retry (with the same Idempotency-Key)",
}
BODY_ERRORS: Final = (400, 413, 415, 422)
API_ERRORS: Final = (401, 403, 429, 503)


def _param(
    name: str, where: str, schema: Schema, description: str = "", required: bool = False
) -> Schema:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "schema": schema,
        "description": description,
    }


USER_PARAM: Final = _param("user_id", "path", USER_ID, "the account")
IDEM_PARAM: Final = _param(
    "Idempotency-Key",
    "header",
    IDEM_ITEM,
    "a repeat returns the first response (Idempotent-Replayed: true)",
)


def _response(schema: str, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": ref(schema)}}}


def op(
    summary: str,
    role: str | None,
    ok: dict[int, str],
    *,
    body: str | None = None,
    params: tuple[Schema, ...] = (),
    errors: tuple[int, ...] = (),
) -> Schema:
    """One operation: ``ok`` maps success statuses to response schema names."""
    responses: dict[str, Schema] = {str(s): _response(name, "success") for s, name in ok.items()}
    codes = set(errors)
    if body is not None:
        codes.update(BODY_ERRORS)
    if role is not None:
        codes.update(API_ERRORS)
    for code in sorted(codes):
        responses[str(code)] = _response("Error", ERRORS[code])
    operation: Schema = {
        "summary": summary,
        "responses": responses,
        "security": [{"bearer": []}] if role else [],
    }
    if role:
        operation["x-role"] = role
    if params:
        operation["parameters"] = list(params)
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref(body)}},
        }
    return operation


def _no_content(operation: Schema) -> Schema:
    """``operation`` answering 204 with no body on success."""
    operation["responses"] = {"204": {"description": "done"}, **operation["responses"]}
    return operation


def _example(kind: str) -> Schema:
    o = op(
        f"enqueue a sample {kind} task", "producer", {202: "TaskAccepted"}, body=f"Example{kind}"
    )
    o["requestBody"]["required"] = False
    return {"post": o}


PATHS: Final[dict[str, dict[str, Schema]]] = {
    "/health": {"get": op("the process is up", None, {200: "Any"})},
    "/ready": {
        "get": op("Redis and MongoDB answer", None, {200: "Any"}, errors=())
        | {
            "responses": {
                "200": _response("Any", "ready"),
                "503": _response("Any", "a dependency is down"),
            }
        }
    },
    "/openapi.json": {"get": op("this document", None, {200: "Any"})},
    "/api/queue/enqueue": {
        "post": op(
            "queue a task",
            "producer",
            {202: "TaskAccepted"},
            body="Enqueue",
            params=(IDEM_PARAM,),
            errors=(409,),
        )
    },
    "/api/queue/tasks/{task_id}": {
        "delete": op(
            "cancel a waiting, queued or scheduled task (and the tasks waiting for it)",
            "producer",
            {200: "TaskCancelled"},
            errors=(404, 409),
            params=(_param("task_id", "path", {"type": "string"}),),
        )
    },
    "/api/queue/status/{task_id}": {
        "get": op(
            "a task's status",
            "reader",
            {200: "TaskStatus"},
            errors=(404,),
            params=(_param("task_id", "path", {"type": "string"}),),
        )
    },
    "/api/queue/stats": {"get": op("every queue's figures", "admin", {200: "QueueStats"})},
    "/api/queue/stats/{queue_name}": {
        "get": op(
            "one queue's figures",
            "admin",
            {200: "QueueStat"},
            errors=(404,),
            params=(_param("queue_name", "path", {"type": "string", DEPLOYMENT: "queue"}),),
        )
    },
    "/api/queue/example/credit-purchase": _example("CreditPurchase"),
    "/api/queue/example/user-registration": _example("UserRegistration"),
    "/api/queue/example/credit-update": _example("CreditUpdate"),
    "/api/schedules": {
        "get": op("every recurring schedule, soonest first", "admin", {200: "Schedules"})
    },
    "/api/schedules/{name}": {
        "get": op(
            "one recurring schedule",
            "admin",
            {200: "Schedule"},
            errors=(404,),
            params=(_param("name", "path", {"type": "string"}),),
        ),
        "put": op(
            "create (201) or replace (200) a recurring schedule; cron: 5 fields, or 6 with "
            "seconds first; takes effect at its next tick",
            "admin",
            {201: "Schedule", 200: "Schedule"},
            body="SchedulePut",
            params=(_param("name", "path", SCHEDULE_NAME),),
        ),
        "delete": _no_content(
            op(
                "delete a recurring schedule (a tick already claimed still fires)",
                "admin",
                {},
                errors=(404,),
                params=(_param("name", "path", {"type": "string"}),),
            )
        ),
    },
    "/api/users": {
        "post": op(
            "register a user",
            "producer",
            {201: "Appended"},
            body="RegisterUser",
            params=(IDEM_PARAM,),
            errors=(409,),
        )
    },
    "/api/accounts/{user_id}/purchases": {
        "post": op(
            "record a purchase",
            "producer",
            {201: "Appended"},
            body="Purchase",
            params=(USER_PARAM, IDEM_PARAM),
            errors=(404, 409),
        )
    },
    "/api/accounts/{user_id}/usage": {
        "post": op(
            "spend credits (409 insufficient_credits with the balance)",
            "producer",
            {201: "Appended"},
            body="Use",
            params=(USER_PARAM, IDEM_PARAM),
            errors=(404, 409),
        )
    },
    "/api/accounts/{user_id}/adjustments": {
        "post": op(
            "adjust a balance",
            "admin",
            {201: "Appended"},
            body="Adjust",
            params=(USER_PARAM, IDEM_PARAM),
            errors=(404, 409),
        )
    },
    "/api/accounts/{user_id}/holds": {
        "post": op(
            "reserve credits: 409 insufficient_credits when amount exceeds the available "
            "credits (balance - held), 409 too_many_holds beyond LEDGER_MAX_OPEN_HOLDS "
            "(default 100) open holds; released by the scheduler at its expiry",
            "producer",
            {201: "HoldAppended"},
            body="Hold",
            params=(USER_PARAM, IDEM_PARAM),
            errors=(404, 409),
        ),
        "get": op(
            "the account's open holds, oldest first (from Redis: never behind)",
            "reader",
            {200: "OpenHolds"},
            errors=(404, 422),
            params=(USER_PARAM,),
        ),
    },
    "/api/accounts/{user_id}/holds/{hold_id}/capture": {
        "post": op(
            "use all or part of an open hold, releasing the rest in the same event "
            "(409 hold_not_open once captured, released or expired; 404 unknown_hold)",
            "producer",
            {201: "HoldAppended"},
            body="Capture",
            params=(USER_PARAM, _param("hold_id", "path", HOLD_ID), IDEM_PARAM),
            errors=(404, 409),
        )
    },
    "/api/accounts/{user_id}/holds/{hold_id}/release": {
        "post": op(
            "release an open hold (409 hold_not_open once captured, released or expired)",
            "producer",
            {201: "HoldAppended"},
            body="Release",
            params=(USER_PARAM, _param("hold_id", "path", HOLD_ID), IDEM_PARAM),
            errors=(404, 409),
        )
    },
    "/api/events:batch": {
        "post": op(
            f"up to {MAX_BATCH} appends, one result each (adjust items need admin)",
            "producer",
            {200: "BatchResult"},
            body="BatchRequest",
        )
    },
    "/api/accounts/{user_id}/balance": {
        "get": op(
            "the projected balance; min_version waits (bounded) for read-your-writes",
            "reader",
            {200: "Balance"},
            errors=(404, 409, 422),
            params=(
                USER_PARAM,
                _param(
                    "min_version",
                    "query",
                    {"type": "integer", "minimum": 1, "maximum": MAX_CREDITS},
                ),
                _param(
                    "wait_ms",
                    "query",
                    {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": MAX_WAIT_MS,
                        "default": DEFAULT_WAIT_MS,
                    },
                ),
            ),
        )
    },
    "/api/accounts/{user_id}/credit-score": {
        "get": op(
            "the projected credit score",
            "reader",
            {200: "CreditScore"},
            errors=(404, 409, 422),
            params=(USER_PARAM,),
        )
    },
    "/api/accounts/{user_id}/events": {
        "get": op(
            "the archived events, oldest first",
            "reader",
            {200: "EventsPage"},
            errors=(404, 422),
            params=(
                USER_PARAM,
                _param(
                    "after_version",
                    "query",
                    {"type": "integer", "minimum": 0, "maximum": MAX_CREDITS, "default": 0},
                ),
                _param(
                    "limit",
                    "query",
                    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
                ),
            ),
        )
    },
    # operators' endpoints (api/routes/ops.py): listed when mounted
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (admin when keys are configured)",
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "text exposition", "content": {"text/plain": {}}},
                "401": _response("Error", ERRORS[401]),
                "403": _response("Error", ERRORS[403]),
            },
        }
    },
    "/dashboard": {
        "get": {
            "summary": "HTML dashboard",
            "security": [],
            "responses": {"200": {"description": "a page", "content": {"text/html": {}}}},
        }
    },
    "/dashboard/app.js": {
        "get": {
            "summary": "the dashboard's script",
            "security": [],
            "responses": {"200": {"description": "JavaScript", "content": {"text/javascript": {}}}},
        }
    },
    "/api/dlq": {"get": op("dead letters", "admin", {200: "Any"}, errors=(422,))},
    "/api/projections": {
        "get": op("projector groups: pending, lag, checkpoint", "reader", {200: "Any"})
    },
    "/api/ops/overview": {"get": op("what the dashboard polls", "admin", {200: "Any"})},
    "/api/dlq/{entry_id}/requeue": {
        "post": op(
            "requeue a dead letter",
            "admin",
            {200: "Any"},
            errors=(404,),
            params=(_param("entry_id", "path", {"type": "string"}),),
        )
    },
}


def mounted(routes: list[BaseRoute]) -> dict[str, set[str]]:
    """Path -> methods (HEAD left out) of the app's routes."""
    out: dict[str, set[str]] = {}
    for route in routes:
        if isinstance(route, Route):
            methods = {m.lower() for m in (route.methods or {"GET"}) if m != "HEAD"}
            out.setdefault(route.path, set()).update(methods)
    return out


def document(routes: list[BaseRoute]) -> Schema:
    """The OpenAPI document of the operations among ``routes``."""
    present = mounted(routes)
    paths = {
        path: {m: o for m, o in ops.items() if m in present.get(path, set())}
        for path, ops in PATHS.items()
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Credit ledger",
            "version": "0.1.0",
            "description": "Event-sourced credit ledger on Redis Streams. Errors are "
            "{error, message, field?}. Roles: reader < producer < admin.",
        },
        "paths": {p: ops for p, ops in paths.items() if ops},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def for_deployment(
    doc: Schema, queues: list[str], max_hold_expiry_s: int, *, keys: bool = True
) -> Schema:
    """``doc`` as this deployment answers: the queue names it accepts, the longest
    hold it allows (the ``x-deployment`` marks are replaced); with no API keys
    configured every caller is admin, so no operation asks for a bearer key and
    none answers 401 or 403."""

    def fill(node: Any) -> Any:
        if isinstance(node, list):
            return [fill(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {k: fill(v) for k, v in node.items() if k != DEPLOYMENT}
        match node.get(DEPLOYMENT):
            case "queue":
                out.pop("pattern", None)
                out["enum"] = queues
            case "max-hold-expiry":
                out["maximum"] = max_hold_expiry_s
        return out

    out = dict(fill(doc))
    if not keys:
        for ops in out["paths"].values():
            for operation in ops.values():
                operation["security"] = []
                for code in ("401", "403"):
                    operation["responses"].pop(code, None)
        out["info"] = {
            **out["info"],
            "description": out["info"]["description"]
            + " This deployment has no API keys: every caller is admin.",
        }
    return out


async def openapi(request: Request) -> Response:
    state = app_state(request)
    config = state.qm.config
    doc = document(request.app.routes)
    queues = [q.name for q in config.queues]
    keys = bool(state.settings.api_keys)
    return JSONResponse(for_deployment(doc, queues, config.max_hold_expiry_s, keys=keys))


def routes() -> list[BaseRoute]:
    return [Route("/openapi.json", openapi, methods=["GET"])]
