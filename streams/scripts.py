"""The Lua scripts, loaded from ``streams/lua/*.lua`` once per client, and how they run.

Every script call goes through ``run_many``: pipelined EVALSHA, sent as the
caller builds each call, and never resent by the driver after a connection
error — a lost reply can hide a write that happened, and a blind resend of an
append without an Idempotency-Key would record it twice. The caller gets
``Unavailable`` and decides (the API answers 503: retry with the same key).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

from redis.commands.core import Script
from redis.exceptions import NoScriptError, ResponseError

from .connection import RedisClient

ScriptArg = str | int | bytes
"""A key or argument of a script call, as the driver sends it."""

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:  # packing the protocol in C halves the client's cost per call
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is a dependency (redis[hiredis])
    _hiredis_pack = None

Call = tuple[Script, Sequence[str], Sequence[ScriptArg]]
"""(script, keys, args) of one script call."""

NAMES = ("append", "enqueue", "schedule", "begin", "settle", "reclaim", "requeue", "read")


PRELUDES = {"begin": ("owned",), "settle": ("owned",)}
"""Shared Lua functions a script is sent with (Redis scripts cannot import)."""


@cache
def source(name: str) -> str:
    parts = [*PRELUDES.get(name, ()), name]
    return "".join(
        (files("streams") / "lua" / f"{part}.lua").read_text(encoding="utf-8") for part in parts
    )


@dataclass(frozen=True, slots=True)
class Scripts:
    append: Script
    enqueue: Script
    schedule: Script
    begin: Script
    settle: Script
    reclaim: Script
    requeue: Script
    read: Script


def load(client: RedisClient) -> Scripts:
    """Register every script on ``client`` (a Redis or RedisCluster)."""
    return Scripts(**{name: client.register_script(source(name)) for name in NAMES})


def run_many(
    client: RedisClient, calls: Iterable[Call], each: Callable[[int, Any], None] | None = None
) -> list[Any]:
    """Run script calls by pipelined EVALSHA; return their replies in order.

    ``calls`` may be a generator: each call is written to the socket as soon as
    it is built, so Redis runs call n while the caller builds call n+1; ``each``
    sees every reply (index, reply) as it arrives, while Redis runs the later
    calls. A call that meets NOSCRIPT (Redis restarted) did not run at all: its
    script is loaded and the call runs again. Any other error is raised.
    """
    replies, sent = _send_all(client, calls, each)
    missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
    if missing:
        for script in {id(sent[i][0]): sent[i][0] for i in missing}.values():
            client.script_load(script.script)
        again, _ = _send_all(client, [sent[i] for i in missing])
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply
            if each is not None and not isinstance(reply, Exception):
                each(i, reply)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _send_all(
    client: Any, calls: Iterable[Call], each: Callable[[int, Any], None] | None = None
) -> tuple[list[Any], list[Call]]:
    """(replies, the calls sent); an error reply is returned in its place.

    ``client`` is ``Any`` here: the connection-level calls below are untyped in redis-py."""
    replies: list[Any] = []
    if not hasattr(client, "connection_pool"):  # RedisCluster: its own pipeline
        sent = list(calls)
        pipe = client.pipeline(transaction=False)
        for script, keys, args in sent:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        replies = list(pipe.execute(raise_on_error=False))
        for i, reply in enumerate(replies):
            if each is not None and not isinstance(reply, Exception):
                each(i, reply)
        return replies, sent
    pool = client.connection_pool
    conn = pool.get_connection()
    sent = []

    def packed(call: Call) -> bytes:
        script, keys, args = call
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        return (
            b"".join(conn.pack_command(*command))
            if _hiredis_pack is None
            else _hiredis_pack(command)
        )

    try:
        if isinstance(calls, list):  # all known: one write (each write is a costly syscall)
            sent = calls
            if sent:
                conn.send_packed_command([b"".join(map(packed, sent))])
        else:  # built as we go: each call goes out as soon as it exists
            for call in calls:
                conn.send_packed_command([packed(call)], check_health=not sent)
                sent.append(call)
        for i in range(len(sent)):
            try:
                reply = conn.read_response()
            except ResponseError as exc:  # this call's error; the stream stays in step
                replies.append(exc)
                continue
            replies.append(reply)
            if each is not None:
                each(i, reply)
    except BaseException:
        conn.disconnect()  # replies may still be in flight: never reuse this socket
        raise
    finally:
        pool.release(conn)
    return replies, sent
