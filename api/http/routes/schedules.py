"""Recurring schedules (``streams.schedules``): cron expressions that enqueue a task per tick.

PUT    /api/schedules/{name}   admin   201 created | 200 replaced: the schedule
GET    /api/schedules          admin   200 {schedules: [...]}, soonest first
GET    /api/schedules/{name}   admin   200 the schedule | 404
DELETE /api/schedules/{name}   admin   204 | 404

The body of a PUT: ``{cron, queue_name, task_type, task_data, priority?, timezone?}``;
``cron`` has 5 fields, or 6 with seconds first; ``timezone`` is an IANA name
(default UTC). Every field is checked before anything is stored (422 naming it;
413 for ``task_data`` over the task size limit). Times are UTC ISO 8601.
"""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ledger.tasks import check_priority
from streams import schedules

from ..auth import Role, requires
from ..errors import error_response
from ..schemas import json_object, only_fields
from ..state import app_state

PUT_REQUIRED: Final = ("cron", "queue_name", "task_type", "task_data")
PUT_OPTIONAL: Final = ("priority", "timezone")


def _not_found(name: str) -> Response:
    return error_response(404, "unknown_schedule", f"no schedule {name[:64]!r}")


@requires(Role.ADMIN)
async def put_schedule(request: Request) -> Response:
    name = schedules.check_name(request.path_params["name"])
    body = await json_object(request)
    only_fields(body, PUT_REQUIRED, PUT_OPTIONAL)
    # absent: the queue's own priority; present, it must be 1..4 (null is refused)
    priority = check_priority(body["priority"]) if "priority" in body else None
    state = app_state(request)
    created = await state.blocking(
        state.qm.add_schedule,
        name,
        body["cron"],
        body["queue_name"],
        body["task_type"],
        body["task_data"],
        priority,
        body.get("timezone", "UTC"),
    )
    found = await state.blocking(state.qm.get_schedule, name)
    return JSONResponse(found, status_code=201 if created else 200)


@requires(Role.ADMIN)
async def list_schedules(request: Request) -> Response:
    state = app_state(request)
    return JSONResponse({"schedules": await state.blocking(state.qm.list_schedules)})


@requires(Role.ADMIN)
async def get_schedule(request: Request) -> Response:
    name = request.path_params["name"]
    state = app_state(request)
    found = await state.blocking(state.qm.get_schedule, name)
    return JSONResponse(found) if found is not None else _not_found(name)


@requires(Role.ADMIN)
async def delete_schedule(request: Request) -> Response:
    name = request.path_params["name"]
    state = app_state(request)
    if not await state.blocking(state.qm.remove_schedule, name):
        return _not_found(name)
    return Response(status_code=204)


def routes() -> list[BaseRoute]:
    return [
        Route("/api/schedules", list_schedules, methods=["GET"]),
        Route("/api/schedules/{name}", get_schedule, methods=["GET"]),
        Route("/api/schedules/{name}", put_schedule, methods=["PUT"]),
        Route("/api/schedules/{name}", delete_schedule, methods=["DELETE"]),
    ]
