"""A per-key token bucket held in Redis, in front of every ``/api`` route.

Each API key (unknown or missing keys: the client address) has a bucket
``ledger:rl:<id>``, ``<id>`` being the ``Caller.identity`` that ``api.http.auth``
resolved for the request, of ``rate_burst`` tokens refilled at ``rate_per_s``; one
request takes one token. The refill and the take are one Lua step using the
Redis clock, so every API process shares the same buckets. An empty bucket is
a 429 with ``Retry-After`` (whole seconds, at least 1). ``rate_per_s <= 0``
turns the limit off. If Redis cannot be reached the request gets the 503 any
other Redis call would give.
"""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from streams.connection import translate
from streams.errors import Unavailable

from .auth import caller
from .errors import error_response, response_for
from .state import app_state

PREFIX = "ledger:rl:"

BUCKET_LUA = """
-- KEYS[1] ledger:rl:<id>  hash {tokens, ts(ms)}
-- ARGV[1] rate per second, ARGV[2] burst
-- returns {allowed 0|1, ms until one token is there}
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(b[1]), tonumber(b[2])
if tokens == nil or ts == nil then tokens, ts = burst, now end
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate / 1000) end
local allowed, wait = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait}
"""


def retry_after(wait_ms: int) -> int:
    """Whole seconds to wait, at least 1."""
    return max(1, math.ceil(wait_ms / 1000))


class RateLimit:
    """Pure-ASGI middleware: take a token for each ``/api`` request or answer 429."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._script: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/api"):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        state = app_state(request)
        settings = state.settings
        if settings.rate_per_s <= 0:
            await self.app(scope, receive, send)
            return
        if self._script is None:
            self._script = state.redis.register_script(BUCKET_LUA)
        key = PREFIX + caller(request).identity
        try:
            allowed, wait_ms = await state.blocking(
                self._take, key, settings.rate_per_s, max(1, settings.rate_burst)
            )
        except Unavailable as exc:  # Redis down: the same 503 as any other call
            await response_for(exc)(scope, receive, send)
            return
        if allowed:
            await self.app(scope, receive, send)
            return
        seconds = retry_after(wait_ms)
        response = error_response(
            429,
            "rate_limited",
            f"too many requests; retry after {seconds} s",
            headers={"Retry-After": str(seconds)},
        )
        await response(scope, receive, send)

    def _take(self, key: str, rate: float, burst: int) -> tuple[int, int]:
        with translate():
            reply = self._script(keys=[key], args=[rate, burst])
        return int(reply[0]), int(reply[1])
