"""Operators' endpoints: health and readiness (more follow: metrics, dead letters, dashboard)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..state import AppState


async def health(request: Request) -> Response:
    """The process is up (no dependency is checked)."""
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    """Redis and MongoDB answer: the process can serve."""
    state: AppState = request.app.state.ledger
    checks: dict[str, str] = {}
    try:
        await state.blocking(state.redis.ping)
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
    return JSONResponse({"status": "ready" if ok else "unavailable", "checks": checks},
                        status_code=200 if ok else 503)


def routes() -> list[BaseRoute]:
    return [Route("/health", health), Route("/ready", ready)]
