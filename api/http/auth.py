"""Bearer API keys with roles: reader < producer < admin.

reader: read balances, scores, events, task status. producer: also append and
enqueue. admin: everything, including adjustments, dead letters and stats.
With no keys configured every request is admin — ``ledger serve`` then refuses
to listen beyond loopback unless told ``--insecure``.

Starlette's ``AuthenticationMiddleware`` runs ``BearerKeys`` once per request:
it reads the key and puts a ``Caller`` in ``request.user`` and the role's
scopes in ``request.auth`` (each role has its own scope and every weaker one's).
It never refuses by itself, so public routes answer whatever the header says;
a route declares what it needs with ``@requires(Role.X)``, which answers 401
(no or unknown key) or 403 (a weaker role). The rate limiter keys its bucket by
the same ``Caller.identity``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Final

from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
    has_required_scope,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from .errors import Forbidden, Unauthorized
from .state import app_state

Endpoint = Callable[[Request], Awaitable[Response]]

NO_KEY: Final = "send Authorization: Bearer <api key>"
UNKNOWN_KEY: Final = "unknown API key"


class Role(StrEnum):
    """What a key may do; declared weakest first."""

    READER = "reader"
    PRODUCER = "producer"
    ADMIN = "admin"

    @property
    def scopes(self) -> list[str]:
        """This role and every weaker one: an admin has all three scopes."""
        order = list(Role)
        return [r.value for r in order[: order.index(self) + 1]]


class Caller(BaseUser):
    """Who sent the request, as ``BearerKeys`` resolved it."""

    __slots__ = ("_identity", "refusal", "role")

    def __init__(self, identity: str, role: Role | None, refusal: str = "") -> None:
        self._identity = identity
        self.role = role
        """None: no valid key (``refusal`` says why)."""
        self.refusal = refusal

    @property
    def identity(self) -> str:
        """``anonymous`` (no keys configured), ``key:<digest>`` or ``addr:<client host>``:
        the rate-limit bucket and the owner of ``?min_version`` wait slots."""
        return self._identity

    @property
    def is_authenticated(self) -> bool:
        return self.role is not None

    @property
    def display_name(self) -> str:
        return self._identity


def key_digest(key: str) -> str:
    """An id for rate limiting and logs that reveals nothing of the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class BearerKeys(AuthenticationBackend):
    """Resolve the bearer key against ``Settings.api_keys`` (constant-time compares)."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser]:
        keys = app_state(conn).settings.api_keys
        if not keys:
            return AuthCredentials(Role.ADMIN.scopes), Caller("anonymous", Role.ADMIN)
        address = "addr:" + (conn.client.host if conn.client else "unknown")
        scheme, _, token = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return AuthCredentials(), Caller(address, None, NO_KEY)
        for key, role in keys.items():
            if hmac.compare_digest(key.encode(), token.strip().encode()):
                granted = Role(role)
                return AuthCredentials(granted.scopes), Caller("key:" + key_digest(key), granted)
        return AuthCredentials(), Caller(address, None, UNKNOWN_KEY)


def caller(conn: HTTPConnection) -> Caller:
    """The request's ``Caller`` (set by the middleware ``middleware()`` returns)."""
    user = conn.user
    assert isinstance(user, Caller), "BearerKeys authentication is not installed"
    return user


def check(request: Request, role: Role) -> None:
    """Refuse the request unless its key has ``role``: 401 without a valid key, else 403."""
    if has_required_scope(request, [role.value]):
        return
    who = caller(request)
    if who.role is None:
        raise Unauthorized(who.refusal)
    raise Forbidden(f"this needs the {role} role; the key has {who.role}")


def requires(role: Role) -> Callable[[Endpoint], Endpoint]:
    """Decorate a route: it runs only for a key with ``role`` (checked before anything else)."""

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            check(request, role)
            return await endpoint(request)

        return guarded

    return decorate


def middleware() -> Middleware:
    """The authentication middleware (it never answers by itself: see the module doc)."""
    return Middleware(AuthenticationMiddleware, backend=BearerKeys())


__all__ = ["BearerKeys", "Caller", "Role", "caller", "check", "middleware", "requires"]
