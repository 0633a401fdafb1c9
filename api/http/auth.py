"""Bearer API keys with roles: reader < producer < admin.

reader: read balances, scores, events, task status. producer: also append and
enqueue. admin: everything, including adjustments, dead letters and stats.
With no keys configured every request is admin — ``ledger serve`` then refuses
to listen beyond loopback unless told ``--insecure``.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

from .errors import ApiError
from .state import AppState

RANK = {"reader": 1, "producer": 2, "admin": 3}


def role_of(request: Request, state: AppState) -> tuple[str, str]:
    """(key id for rate limiting, role) of the request's bearer key."""
    keys = state.settings.api_keys
    if not keys:
        return "anonymous", "admin"
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <api key>",
                       headers={"WWW-Authenticate": "Bearer"})
    for key, role in keys.items():
        if hmac.compare_digest(key.encode(), token.strip().encode()):
            # an id for rate limiting and logs that reveals nothing of the key
            return hashlib.sha256(key.encode()).hexdigest()[:16], role
    raise ApiError(401, "unauthorized", "unknown API key", headers={"WWW-Authenticate": "Bearer"})


def require(request: Request, role: str) -> str:
    """Check the caller has at least ``role``; returns its key id."""
    state: AppState = request.app.state.ledger
    key_id, has = role_of(request, state)
    if RANK[has] < RANK[role]:
        raise ApiError(403, "forbidden", f"this needs the {role} role; the key has {has}")
    return key_id
