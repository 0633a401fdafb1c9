"""Operators' endpoints.

    GET  /health                         the process is up (public)
    GET  /ready                          Redis and MongoDB answer (public)
    GET  /metrics                        Prometheus text 0.0.4 (admin when keys are configured)
    GET  /api/dlq?limit=N                newest dead letters, N in 1..500 (admin)
    POST /api/dlq/{entry_id}/requeue     put one back on its stream (admin)
    GET  /api/projections                projector groups: pending, lag, lag_ms, checkpoint
                                         (reader, producer or admin)
    GET  /api/ops/overview               what the dashboard polls: queue stats, projections,
                                         dead-letter count and the newest ones, schedules
                                         (with their last task's status), the oldest
                                         waiting tasks and what they wait for (admin)
    GET  /dashboard, /dashboard/app.js   the operator's page (public: it holds no data)

``lag_ms`` of a projection is now minus the append time of the oldest entry its
group has not acknowledged (pending or not yet delivered); 0 when caught up.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ledger.errors import ValidationError
from streams.connection import ping
from streams.deadletters import DeadLetter, count_dead, list_dead, requeue
from streams.dependencies import waiting_tasks
from streams.times import iso_utc

from .. import dashboard, metrics
from ..auth import Role, requires
from ..state import AppState, app_state

MAX_DLQ_LIMIT = 500


async def health(request: Request) -> Response:
    """The process is up (no dependency is checked)."""
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    """Redis and MongoDB answer: the process can serve."""
    state = app_state(request)
    checks: dict[str, str] = {}
    try:
        await state.blocking(ping, state.redis)
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unavailable: {type(exc).__name__}"
    if state.db is not None:
        try:
            await state.blocking(state.db.command, "ping")
            checks["mongo"] = "ok"
        except Exception as exc:
            checks["mongo"] = f"unavailable: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ok else "unavailable", "checks": checks},
        status_code=200 if ok else 503,
    )


def dead_letter_json(d: DeadLetter) -> dict[str, Any]:
    out = asdict(d)
    out["at"] = iso_utc(out.pop("at_ms")) if d.at_ms else None
    return out


def _limit(request: Request, default: int = 100) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise ValidationError("limit", "limit must be an integer") from None
    if not 1 <= limit <= MAX_DLQ_LIMIT:
        raise ValidationError("limit", f"limit must be between 1 and {MAX_DLQ_LIMIT}")
    return limit


@requires(Role.ADMIN)
async def dlq_list(request: Request) -> Response:
    """The newest dead letters of every partition, newest first."""
    limit = _limit(request)
    state = app_state(request)
    letters = await state.blocking(list_dead, state.redis, state.settings.partitions, limit)
    return JSONResponse([dead_letter_json(d) for d in letters])


@requires(Role.ADMIN)
async def dlq_requeue(request: Request) -> Response:
    """Put a dead letter back on its stream; 404 if there is no such dead letter."""
    state = app_state(request)
    entry_id = request.path_params["entry_id"]
    new_id = await state.blocking(
        requeue, state.redis, state.qm.scripts, state.settings.partitions, entry_id
    )
    return JSONResponse({"requeued": entry_id, "entry_id": new_id})


def _projections(state: AppState) -> list[dict[str, Any]]:
    return metrics.projections_status(state.redis, state.settings.partitions, state.db)


@requires(Role.READER)
async def projections(request: Request) -> Response:
    """Per projection: pending, lag, lag_ms, oldest unacknowledged entry, last checkpoint."""
    state = app_state(request)
    return JSONResponse(await state.blocking(_projections, state))


def _schedules(state: AppState) -> list[dict[str, Any]]:
    """Every schedule, with the status of the task its last tick fired."""
    found = state.qm.list_schedules()
    for s in found:
        last = state.qm.get_task_status(s["last_task_id"]) if s.get("last_task_id") else None
        s["last_task_status"] = last["status"] if last else None
    return found


def _overview(state: AppState) -> dict[str, Any]:
    config = state.settings.streams()
    return {
        "at": iso_utc(int(time.time() * 1000)),
        "queues": metrics.queues_status(state.redis, config),
        "projections": _projections(state),
        "dead_letters": {
            "count": count_dead(state.redis, config.partitions),
            "newest": [dead_letter_json(d) for d in list_dead(state.redis, config.partitions, 50)],
        },
        "schedules": _schedules(state),
        "waiting": waiting_tasks(state.redis, config.partitions, 50),
    }


@requires(Role.ADMIN)
async def overview(request: Request) -> Response:
    """Everything the dashboard shows, in one consistent read."""
    state = app_state(request)
    return JSONResponse(await state.blocking(_overview, state))


def _render_metrics(state: AppState) -> str:
    return metrics.render(state.redis, state.settings.streams(), state.db)


@requires(Role.ADMIN)
async def prometheus(request: Request) -> Response:
    """Prometheus text exposition 0.0.4 (admin when API keys are configured)."""
    state = app_state(request)
    text = await state.blocking(_render_metrics, state)
    return Response(text, media_type=metrics.CONTENT_TYPE)


def routes() -> list[BaseRoute]:
    return [
        Route("/health", health),
        Route("/ready", ready),
        Route("/metrics", prometheus),
        Route("/api/dlq", dlq_list),
        Route("/api/dlq/{entry_id}/requeue", dlq_requeue, methods=["POST"]),
        Route("/api/projections", projections),
        Route("/api/ops/overview", overview),
        *dashboard.routes(),
    ]
