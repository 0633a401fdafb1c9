"""The Lua scripts, loaded from ``streams/lua/*.lua`` once per client.

redis-py's ``Script`` runs EVALSHA and reloads the script after a server restart
(NOSCRIPT), so a restarted Redis needs nothing from us.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

from redis.commands.core import Script

NAMES = ("append", "enqueue", "schedule", "begin", "settle", "reclaim", "requeue")


@cache
def source(name: str) -> str:
    return (files("streams") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Scripts:
    append: Script
    enqueue: Script
    schedule: Script
    begin: Script
    settle: Script
    reclaim: Script
    requeue: Script


def load(client: Any) -> Scripts:
    """Register every script on ``client`` (a Redis or RedisCluster)."""
    return Scripts(**{name: client.register_script(source(name)) for name in NAMES})
