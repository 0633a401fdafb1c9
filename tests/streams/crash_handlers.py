"""Handlers for the crash tests, imported by real worker processes.

``slow_insert`` records every run in the Redis list ``test:ran`` (so a test can
count redeliveries) and inserts one document through ``db_manager`` (so a test
can check the effect happened exactly once).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from streams import default_registry
from streams.connection import RedisClient, connect
from streams.handlers import DBManager

_clients: dict[str, RedisClient] = {}


def _redis() -> RedisClient:
    url = os.environ["REDIS_URL"]
    if url not in _clients:
        _clients[url] = connect(url)  # a Cluster client for redis+cluster://
    return _clients[url]


def slow_insert(data: Mapping[str, Any], db_manager: DBManager) -> bool:
    _redis().rpush("test:ran", data["i"])
    time.sleep(data.get("ms", 0) / 1000)
    db_manager.insert("analytics", {"i": data["i"]})
    return True


default_registry.register("slow_insert", slow_insert)
