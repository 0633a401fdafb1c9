"""``create_app(settings)``: the Starlette app, assembled.

The lifespan opens the Redis and Mongo clients once and closes them at the end;
routes are plain async functions in ``api/http/routes/``; every error maps to
JSON by the one table in ``api/http/errors``. Middleware, outermost first:
request ids, access log and metrics (one timing wrapper), authentication (the
caller, resolved once), the rate limit (keyed by that caller).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anyio import CapacityLimiter
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from ledger.tasks import allowed_collections
from streams import QueueManager
from streams.connection import connect

from ..settings import Settings
from . import auth, metrics
from .errors import HANDLERS
from .ratelimit import RateLimit
from .state import THREADS, AppState


def build_state(settings: Settings) -> AppState:
    client = connect(settings.streams().redis_url, max_connections=THREADS + 16)
    db = None
    manager = None
    if settings.mongo_url:
        from projections.store import MongoDBManager
        from projections.store import connect as mongo_connect

        db = mongo_connect(settings.mongo_url, maxPoolSize=THREADS)[settings.mongo_db]
        manager = MongoDBManager(db, allowed_collections(settings.extra_collections))
    qm = QueueManager(config=settings.streams(), client=client, db=manager)
    return AppState(settings=settings, redis=client, qm=qm, db=db, limiter=CapacityLimiter(THREADS))


def routes() -> list[BaseRoute]:
    from .openapi import routes as openapi_routes
    from .routes import ledger, ops, queue, schedules

    return [
        *ops.routes(),
        *queue.routes(),
        *schedules.routes(),
        *ledger.routes(),
        *openapi_routes(),
    ]


def create_app(settings: Settings, state: AppState | None = None) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.ledger = state or build_state(settings)
        try:
            yield
        finally:
            if state is None:
                s: AppState = app.state.ledger
                s.qm.close()
                if s.db is not None:
                    s.db.client.close()

    handlers: dict[Any, Any] = dict(HANDLERS)
    app = Starlette(
        routes=routes(),
        lifespan=lifespan,
        exception_handlers=handlers,
        middleware=[*metrics.middleware(), auth.middleware(), Middleware(RateLimit)],
    )
    app.router.redirect_slashes = False  # an API answers 404, not a redirect, for "/x/"
    return app
