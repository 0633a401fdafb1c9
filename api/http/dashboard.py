"""``GET /dashboard``: the operator's page (HTML + one script, package data, no CDN).

The page polls ``/api/ops/overview`` every 2 s and draws queue backlog,
processing rate and projection lag on ``<canvas>``, with the projections and the
dead letters (each with a Requeue button) below. The page itself is public — it
holds no data; the API calls it makes carry a bearer key taken from a
``#key=…`` fragment or the key field, kept in the tab's ``sessionStorage``.
Without configured keys it needs none.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

# The script is a file of its own so the policy can forbid inline scripts.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def asset(name: str) -> str:
    return resources.files("api.http").joinpath("static", name).read_text(encoding="utf-8")


async def page(request: Request) -> Response:
    return Response(asset("dashboard.html"), media_type="text/html", headers=SECURITY_HEADERS)


async def script(request: Request) -> Response:
    return Response(asset("dashboard.js"), media_type="text/javascript", headers=SECURITY_HEADERS)


def routes() -> list[BaseRoute]:
    return [Route("/dashboard", page), Route("/dashboard/app.js", script)]
