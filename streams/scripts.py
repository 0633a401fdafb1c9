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
from redis.exceptions import NoScriptError

Call = tuple[Script, list[Any], list[Any]]
"""(script, keys, args) of one script call."""

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


def run_many(client: Any, calls: list[Call]) -> list[Any]:
    """Run script calls in one pipeline by EVALSHA; return their replies in order.

    redis-py's own pipelined scripts ask SCRIPT EXISTS before every execute (a
    round trip each time); here a call that meets NOSCRIPT (Redis restarted)
    loads its script and runs again — NOSCRIPT means it did not run at all.
    Any other error is raised.
    """
    if not calls:
        return []
    replies = _pipelined(client, calls)
    missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
    if missing:
        for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
            client.script_load(script.script)
        for i, reply in zip(missing, _pipelined(client, [calls[i] for i in missing]),
                            strict=True):
            replies[i] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _pipelined(client: Any, calls: list[Call]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for script, keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    return list(pipe.execute(raise_on_error=False))
