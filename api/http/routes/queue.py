"""The original ``/api/queue`` endpoints, same paths and bodies.

POST /api/queue/enqueue                       producer  202 {task_id, queue_name, status}
                                                        (+ depends_on: [task_id, …])
DELETE /api/queue/tasks/{task_id}             producer  200 {task_id, status: cancelled}
                                                        | 409 (running or ended) | 404
GET  /api/queue/status/{task_id}              reader    200 status record | 404
GET  /api/queue/stats[/{queue_name}]          admin     200 per-queue figures | 404
POST /api/queue/example/credit-purchase       producer  202 (a sample task of that kind)
POST /api/queue/example/user-registration     producer  202
POST /api/queue/example/credit-update         producer  202
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ledger.commands import check_email, check_user_id
from ledger.errors import ValidationError
from ledger.money import check_amount, check_delta
from ledger.tasks import Priority, check_priority

from ..auth import Role, requires
from ..errors import error_response
from ..schemas import idempotency_key, json_object, only_fields
from ..state import app_state

ENQUEUE_REQUIRED: Final = ("queue_name", "task_type", "task_data")
ENQUEUE_OPTIONAL: Final = ("priority", "delay", "depends_on")
MAX_TASK_ID: Final = 128


def accepted(task_id: str, queue_name: str, delay: object) -> Response:
    later = isinstance(delay, int | float) and round(delay * 1000) > 0  # as the queue rounds
    status = "scheduled" if later else "queued"
    return JSONResponse(
        {"task_id": task_id, "queue_name": queue_name, "status": status}, status_code=202
    )


@requires(Role.PRODUCER)
async def enqueue(request: Request) -> Response:
    """Queue a task; ``task_data`` is checked by ``ledger.tasks`` (no ``$``-keys, bounded)."""
    key = idempotency_key(request)
    body = await json_object(request)
    only_fields(body, ENQUEUE_REQUIRED, ENQUEUE_OPTIONAL)
    state = app_state(request)
    delay = body.get("delay", 0)
    # absent: the queue's own priority; present, it must be 1..4 (null is refused)
    priority = check_priority(body["priority"]) if "priority" in body else None
    if "depends_on" not in body:
        task_id = await state.blocking(
            state.qm.enqueue,
            body["queue_name"],
            body["task_type"],
            body["task_data"],
            priority,
            delay,
            idempotency_key=key,
        )
        return accepted(task_id, body["queue_name"], delay)
    if not isinstance(body["depends_on"], list):  # null, a string, an object...
        raise ValidationError("depends_on", "depends_on must be a list of task ids")
    done = await state.blocking(
        state.qm.submit,
        body["queue_name"],
        body["task_type"],
        body["task_data"],
        priority,
        delay,
        key,
        body["depends_on"],
    )
    return JSONResponse(
        {"task_id": done.task_id, "queue_name": body["queue_name"], "status": done.status},
        status_code=202,
    )


@requires(Role.PRODUCER)
async def cancel(request: Request) -> Response:
    """Cancel a waiting, queued or scheduled task; its dependents are cancelled too."""
    task_id = request.path_params["task_id"]
    state = app_state(request)
    outcome = "missing"
    if 0 < len(task_id) <= MAX_TASK_ID:
        outcome = await state.blocking(state.qm.cancel, task_id)
    if outcome == "missing":
        return error_response(404, "unknown_task", f"no task {task_id[:MAX_TASK_ID]!r}")
    if outcome != "cancelled":
        return error_response(
            409,
            "not_cancellable",
            f"task {task_id!r} is {outcome}: only waiting, queued or scheduled tasks can be "
            "cancelled",
        )
    return JSONResponse({"task_id": task_id, "status": "cancelled"})


@requires(Role.READER)
async def status(request: Request) -> Response:
    task_id = request.path_params["task_id"]
    state = app_state(request)
    found = None
    if 0 < len(task_id) <= MAX_TASK_ID:
        found = await state.blocking(state.qm.get_task_status, task_id)
    if found is None:
        return error_response(404, "unknown_task", f"no task {task_id[:MAX_TASK_ID]!r}")
    record = {
        name: found.get(name)
        for name in (
            "task_id",
            "status",
            "attempts",
            "queue_name",
            "task_type",
            "enqueued_at",
            "started_at",
            "finished_at",
            "last_error",
            "depends_on",
            "waiting_for",
        )
    }
    return JSONResponse(record)


@requires(Role.ADMIN)
async def stats(request: Request) -> Response:
    state = app_state(request)
    return JSONResponse(await state.blocking(state.qm.get_queue_stats))


@requires(Role.ADMIN)
async def queue_stats(request: Request) -> Response:
    state = app_state(request)
    name = request.path_params["queue_name"]
    if state.qm.config.queue(name) is None:
        known = ", ".join(q.name for q in state.qm.config.queues)
        return error_response(404, "unknown_queue", f"no queue {name[:64]!r} (known: {known})")
    return JSONResponse(await state.blocking(state.qm.get_queue_stats, name))


# --- the original examples: sample tasks run by the default DB handler ---------------


def _sample_id(body: dict[str, Any]) -> str:
    return check_user_id(body.get("user_id", f"user-{uuid.uuid4().hex[:8]}"))


def _credit_purchase(body: dict[str, Any]) -> tuple[str, str, dict[str, Any], Priority]:
    only_fields(body, (), ("user_id", "amount"))
    user = _sample_id(body)
    amount = check_amount(body.get("amount", 100), "amount")
    data = {"user_id": user, "amount": amount, "currency": "USD", "status": "completed"}
    return (
        "high_priority",
        "credit_purchase",
        {"operation": "insert", "collection": "credit_purchases", "data": data},
        Priority.HIGH,
    )


def _user_registration(body: dict[str, Any]) -> tuple[str, str, dict[str, Any], Priority]:
    only_fields(body, (), ("user_id", "email"))
    user = _sample_id(body)
    # a user id may hold what an address may not ("@9"): the default is built from
    # the letters and digits of it, so only an email the client sent can be refused
    local = re.sub(r"[^A-Za-z0-9._-]", "", user).strip(".") or "user"
    email = check_email(body.get("email", f"{local[:64]}@example.com"))
    return (
        "default",
        "user_registration",
        {"operation": "insert", "collection": "users", "data": {"user_id": user, "email": email}},
        Priority.NORMAL,
    )


def _credit_update(body: dict[str, Any]) -> tuple[str, str, dict[str, Any], Priority]:
    only_fields(body, (), ("user_id", "delta"))
    user = _sample_id(body)
    delta = check_delta(body.get("delta", 10), "delta")
    return (
        "default",
        "credit_update",
        {
            "operation": "insert",
            "collection": "credit_updates",
            "data": {"user_id": user, "delta": delta, "reason": "example"},
        },
        Priority.NORMAL,
    )


EXAMPLES: Final = {
    "credit-purchase": _credit_purchase,
    "user-registration": _user_registration,
    "credit-update": _credit_update,
}


def _example(name: str) -> Any:
    build = EXAMPLES[name]

    @requires(Role.PRODUCER)
    async def example(request: Request) -> Response:
        body = await json_object(request, optional=True)
        queue_name, task_type, data, priority = build(body)
        state = app_state(request)
        task_id = await state.blocking(state.qm.enqueue, queue_name, task_type, data, priority)
        return accepted(task_id, queue_name, 0)

    example.__name__ = f"example_{name.replace('-', '_')}"
    return example


def routes() -> list[BaseRoute]:
    return [
        Route("/api/queue/enqueue", enqueue, methods=["POST"]),
        Route("/api/queue/status/{task_id}", status, methods=["GET"]),
        Route("/api/queue/tasks/{task_id}", cancel, methods=["DELETE"]),
        Route("/api/queue/stats", stats, methods=["GET"]),
        Route("/api/queue/stats/{queue_name}", queue_stats, methods=["GET"]),
        *(
            Route(f"/api/queue/example/{name}", _example(name), methods=["POST"])
            for name in EXAMPLES
        ),
    ]
