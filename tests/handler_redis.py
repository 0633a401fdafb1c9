"""The Redis client of the test handler modules that real worker processes import
(``ledger worker --import tests.…``): one client per process on ``REDIS_URL``,
which may name one redis-server or a Redis Cluster (``redis+cluster://``)."""

from __future__ import annotations

import os

from streams.connection import RedisClient, connect

_clients: dict[str, RedisClient] = {}


def handler_redis() -> RedisClient:
    """The process's client on ``REDIS_URL`` (made on first use)."""
    url = os.environ["REDIS_URL"]
    if url not in _clients:
        _clients[url] = connect(url, socket_connect_timeout=2)
    return _clients[url]
