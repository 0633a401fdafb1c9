"""The Lua scripts, loaded from ``streams/lua/*.lua`` once per client, and how they run.

Every script call goes through ``run_many``: pipelined EVALSHA, sent as the
caller builds each call, and never resent by the driver after a connection
error — a lost reply can hide a write that happened, and a blind resend of an
append without an Idempotency-Key would record it twice. The caller gets
``Unavailable`` and decides (the API answers 503: retry with the same key).
With ``wait=(n, timeout_ms)`` the calls are followed by ``WAIT`` on every
connection they went through (one per Cluster node), and fewer than ``n``
replicas confirming is ``Unavailable`` too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import (
    AskError,
    MovedError,
    NoScriptError,
    ResponseError,
    TryAgainError,
)

from .connection import RedisClient
from .errors import Unavailable

ScriptArg = str | int | bytes
"""A key or argument of a script call, as the driver sends it."""

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:  # packing the protocol in C halves the client's cost per call
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is a dependency (redis[hiredis])
    _hiredis_pack = None

Call = tuple[Script, Sequence[str], Sequence[ScriptArg]]
"""(script, keys, args) of one script call."""

Wait = tuple[int, int]
"""(replicas, timeout_ms) of the ``WAIT`` that follows the calls (``run_many``)."""

NAMES = (
    "append",
    "enqueue",
    "schedule",
    "begin",
    "settle",
    "reclaim",
    "requeue",
    "read",
    "forget",
    "tick",
    "deps",
    "keepalive",
)


PRELUDES = {
    "begin": ("owned",),
    "settle": ("owned", "outbox"),
    "keepalive": ("owned",),
    "deps": ("outbox",),
}
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
    forget: Script
    tick: Script
    deps: Script
    keepalive: Script


def load(client: RedisClient) -> Scripts:
    """Register every script on ``client`` (a Redis or RedisCluster)."""
    return Scripts(**{name: client.register_script(source(name)) for name in NAMES})


def run_many(
    client: RedisClient,
    calls: Iterable[Call],
    each: Callable[[int, Any], None] | None = None,
    *,
    wait: Wait | None = None,
) -> list[Any]:
    """Run script calls by pipelined EVALSHA; return their replies in order.

    ``calls`` may be a generator: each call is written to the socket as soon as
    it is built, so Redis runs call n while the caller builds call n+1; ``each``
    sees every reply (index, reply) as it arrives, while Redis runs the later
    calls. A call that meets NOSCRIPT (Redis restarted) did not run at all: its
    script is loaded and the call runs again. Any other error is raised.

    On a Redis Cluster (``RedisCluster``) the calls are grouped by the node that
    owns each call's slot and each node's share is pipelined the same way (see
    ``_run_cluster``).

    ``wait=(n, timeout_ms)`` (n > 0): ``WAIT n timeout_ms`` is pipelined behind
    the calls on the connection they went through — on a Cluster, on each
    node's connection, and again for calls sent once more (NOSCRIPT, MOVED,
    ASK, TRYAGAIN: another connection, maybe another node). ``WAIT`` covers
    the connection's last write and all before it: the scripts make even a
    repeat (an idempotent "dup") write, so its ``WAIT`` covers the first call
    too. If a connection on which some call ran gets fewer than ``n``
    confirmations (or ``WAIT`` is refused) the calls' effects stay, nothing is
    resent, and ``Unavailable`` is raised: the caller retries with its
    idempotency key. ``each`` may already have seen the replies by then. A
    connection on which no call ran (all answered NOSCRIPT, MOVED, ...) is not
    judged by its ``WAIT``.
    """
    if wait is not None and wait[0] <= 0:
        wait = None
    if isinstance(client, RedisCluster):
        return _run_cluster(client, calls, each, wait)
    replies, sent, acked = _send_all(client, calls, each, wait)
    short = _short(acked, replies, "", wait)
    missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
    if missing:
        for script in {id(sent[i][0]): sent[i][0] for i in missing}.values():
            client.script_load(script.script)
        again, _, acked = _send_all(client, [sent[i] for i in missing], None, wait)
        short = short or _short(acked, again, "", wait)
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply
            if each is not None and not isinstance(reply, Exception):
                each(i, reply)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    if short:
        raise Unavailable(short)
    return replies


_NO_WAIT = object()
"""The ``acked`` of a connection that sent no ``WAIT``."""


def _short(acked: Any, replies: Sequence[Any], where: str, wait: Wait | None) -> str | None:
    """Why the ``WAIT`` behind ``replies`` falls short, or None if it does not
    (or was not sent, or no call among ``replies`` ran on that connection)."""
    if wait is None or acked is _NO_WAIT or all(isinstance(r, _NOT_RUN) for r in replies):
        return None
    n, timeout_ms = wait
    if isinstance(acked, Exception):
        return (
            f"written{where}, but its WAIT was refused ({acked}); "
            "retry with the same Idempotency-Key"
        )
    if int(acked) >= n:
        return None
    return (
        f"written{where}, but only {int(acked)} of {n} replicas confirmed it within "
        f"{timeout_ms} ms; retry with the same Idempotency-Key"
    )


def _wait_packed(conn: Any, wait: Wait) -> bytes:
    command = ("WAIT", wait[0], wait[1])
    if _hiredis_pack is None:
        return b"".join(conn.pack_command(*command))
    return _hiredis_pack(command)


def _read_wait(conn: Any) -> Any:
    """The reply of a pipelined ``WAIT``: the replicas that confirmed, or its error."""
    try:
        return conn.read_response()
    except ResponseError as exc:  # e.g. the node is a replica now: the stream stays in step
        return exc


def _send_all(
    client: Any,
    calls: Iterable[Call],
    each: Callable[[int, Any], None] | None = None,
    wait: Wait | None = None,
) -> tuple[list[Any], list[Call], Any]:
    """(replies, the calls sent, the reply of the ``WAIT`` behind them or
    ``_NO_WAIT``); an error reply is returned in its place.

    ``client`` is ``Any`` here: the connection-level calls below are untyped in redis-py."""
    replies: list[Any] = []
    pool = client.connection_pool
    conn = pool.get_connection()
    sent = []
    acked: Any = _NO_WAIT

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
                tail = [_wait_packed(conn, wait)] if wait is not None else []
                conn.send_packed_command([b"".join([*map(packed, sent), *tail])])
        else:  # built as we go: each call goes out as soon as it exists
            for call in calls:
                conn.send_packed_command([packed(call)], check_health=not sent)
                sent.append(call)
            if sent and wait is not None:
                conn.send_packed_command([_wait_packed(conn, wait)], check_health=False)
        for i in range(len(sent)):
            try:
                reply = conn.read_response()
            except ResponseError as exc:  # this call's error; the stream stays in step
                replies.append(exc)
                continue
            replies.append(reply)
            if each is not None:
                each(i, reply)
        if sent and wait is not None:
            acked = _read_wait(conn)
    except BaseException:
        conn.disconnect()  # replies may still be in flight: never reuse this socket
        raise
    finally:
        pool.release(conn)
    return replies, sent, acked


CLUSTER_ROUNDS = 16
"""How many times a Cluster call redirected (NOSCRIPT, MOVED, ASK) is sent
again before its error is raised (as redis-py's own TTL)."""

TRYAGAIN_FOR_S = 5.0
"""How long calls answered TRYAGAIN are sent again (every ``TRYAGAIN_EVERY_S``)
before the error is raised. TRYAGAIN means the call's slot is being migrated
and its keys are split between the two nodes, or not all there (a key the call
creates): that lasts until the slot's last key has moved or the slot is
reassigned, which for a resharding takes as long as moving the slot's keys.
Giving up early would fail appends (503) and, worse, a worker's settle: its
entries would then be delivered and run again."""
TRYAGAIN_EVERY_S = 0.05

_NOT_RUN = (NoScriptError, AskError, TryAgainError)  # MovedError is an AskError
"""Error replies after which the script certainly did not run: safe to send again."""


@dataclass(slots=True)
class _NodeShare:
    """The calls of one round that go to one Cluster node, on one of its connections."""

    node: Any  # redis.cluster.ClusterNode (untyped)
    asking: bool  # each call is preceded by ASKING (an ASK redirect)
    indexes: list[int]
    pool: Any  # the node's ConnectionPool
    conn: Any  # one connection of it, for this round
    pending: list[bytes] | None = None  # packed calls not yet written (a list input)
    short: str | None = None  # why this round's WAIT on this node fell short, if it did


def _run_cluster(
    client: RedisCluster,
    calls: Iterable[Call],
    each: Callable[[int, Any], None] | None,
    wait: Wait | None = None,
) -> list[Any]:
    """``run_many`` on a Redis Cluster: one pipelined round trip per node.

    Every call's keys share one hash tag, so one slot: the call goes to the
    node that owns the slot of its first key (the client's slot table). Each
    node's calls are packed as raw EVALSHA on one connection of that node's pool
    and written at once (or as built, for a generator), then each node's replies
    are read in order; ``each`` sees them as they are read. redis-py's
    ``ClusterPipeline`` is not used: it refuses EVALSHA and resends after a
    connection error. Here a connection error is raised (``Unavailable`` through
    ``translate``) and nothing is resent. A call answered NOSCRIPT (the script
    is loaded on that node), MOVED (the slot table is updated), ASK (sent to the
    target after ASKING) or TRYAGAIN did not run: it runs again, up to
    ``CLUSTER_ROUNDS`` redirections, and TRYAGAIN (a slot mid-migration) for up
    to ``TRYAGAIN_FOR_S``. Any other error reply is raised.

    With ``wait``, each node's share of each round is followed by ``WAIT`` on
    the same connection; every share on which a call ran must be confirmed by
    enough replicas of its node, else ``Unavailable`` (after the other errors).
    """
    sent: list[Call] = []
    replies: list[Any] = []
    streaming = not isinstance(calls, list)
    shares = _cluster_round(client, calls, sent, replies, {}, streaming, each, wait)
    short = [share.short for share in shares if share.short]
    redirects, tryagain_until = 0, 0.0
    while True:
        again: dict[int, Any] = {}  # index -> the ASK target (None: by the slot table)
        loaded: set[tuple[str, str]] = set()
        slow = redirected = False
        for share in shares:
            for i in share.indexes:
                reply = replies[i]
                if not isinstance(reply, _NOT_RUN):
                    continue
                redirected = redirected or not isinstance(reply, TryAgainError)
                if isinstance(reply, MovedError):
                    client.nodes_manager.move_slot(reply)
                    again[i] = None
                elif isinstance(reply, AskError):
                    target = client.nodes_manager.get_node(host=reply.host, port=reply.port)
                    if target is None:  # a node we do not know yet
                        client.nodes_manager.initialize()
                        target = client.nodes_manager.get_node(host=reply.host, port=reply.port)
                    if target is not None:
                        again[i] = target
                elif isinstance(reply, NoScriptError):
                    script = sent[i][0]
                    if (share.node.name, script.sha) not in loaded:
                        client.get_redis_connection(share.node).script_load(script.script)
                        loaded.add((share.node.name, script.sha))
                    again[i] = share.node if share.asking else None
                else:  # TRYAGAIN: a slot being migrated; give it a moment
                    slow = True  # (at the ASK target again: the owner would only ASK)
                    again[i] = share.node if share.asking else None
        if not again:
            break
        if redirected:
            redirects += 1
            if redirects > CLUSTER_ROUNDS:
                break
        if slow:
            now = time.monotonic()
            tryagain_until = tryagain_until or now + TRYAGAIN_FOR_S
            if now >= tryagain_until:
                break
            time.sleep(TRYAGAIN_EVERY_S)
        shares = _cluster_round(client, sorted(again), sent, replies, again, False, each, wait)
        short += [share.short for share in shares if share.short]
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    if short:
        raise Unavailable("; ".join(short))
    return replies


def _cluster_round(
    client: Any,
    calls: Iterable[Call] | list[int],
    sent: list[Call],
    replies: list[Any],
    ask: dict[int, Any],
    streaming: bool,
    each: Callable[[int, Any], None] | None,
    wait: Wait | None = None,
) -> list[_NodeShare]:
    """Send one round (new calls, or the indexes in ``sent`` of calls to send
    again) grouped by node; store each reply (or error reply) in ``replies``.
    With ``wait`` each node's share ends with ``WAIT``, read after its replies;
    a share it finds short says why in ``short``."""
    shares: dict[tuple[str, bool], _NodeShare] = {}
    try:
        for item in calls:
            if isinstance(item, int):
                i, call = item, sent[item]
            else:
                i, call = len(sent), item
                sent.append(call)
                replies.append(None)
            target = ask.get(i)
            node = target if target is not None else _node_of(client, call)
            share = shares.get((node.name, target is not None))
            if share is None:
                pool = client.get_redis_connection(node).connection_pool
                share = _NodeShare(node, target is not None, [], pool, pool.get_connection())
                share.pending = None if streaming else []
                shares[(node.name, share.asking)] = share
            command = _packed(share.conn, call, share.asking)
            if share.pending is None:  # built as we go: out at once
                share.conn.send_packed_command([command], check_health=not share.indexes)
            else:
                share.pending.append(command)
            share.indexes.append(i)
        for share in shares.values():
            out = share.pending or []  # all known: one write per node
            if wait is not None:  # behind the node's calls, on their connection
                out.append(_wait_packed(share.conn, wait))
            if out:
                first = share.pending is not None  # a list input: nothing written on it yet
                share.conn.send_packed_command([b"".join(out)], check_health=first)
        for share in shares.values():
            for i in share.indexes:
                if share.asking:
                    share.conn.read_response()  # +OK of ASKING
                try:
                    reply = share.conn.read_response()
                except ResponseError as exc:  # this call's error; the stream stays in step
                    replies[i] = exc
                    continue
                replies[i] = reply
                if each is not None:
                    each(i, reply)
            if wait is not None:
                acked = _read_wait(share.conn)
                mine = [replies[i] for i in share.indexes]
                share.short = _short(acked, mine, f" on {share.node.name}", wait)
    except BaseException as exc:
        for share in shares.values():
            share.conn.disconnect()  # replies may still be in flight: never reuse it
        if isinstance(exc, OSError | redis.ConnectionError | redis.TimeoutError):
            _refresh_quietly(client)  # a failover may have moved slots: next call sees it
        raise
    finally:
        for share in shares.values():
            share.pool.release(share.conn)
    return list(shares.values())


def _node_of(client: Any, call: Call) -> Any:
    """The primary that owns the slot of the call's keys (all share one hash tag)."""
    keys = call[1]
    if not keys:
        return client.get_default_node()
    return client.nodes_manager.get_node_from_slot(client.keyslot(keys[0]))


def _packed(conn: Any, call: Call, asking: bool = False) -> bytes:
    script, keys, args = call
    command = ("EVALSHA", script.sha, len(keys), *keys, *args)
    parts = [("ASKING",), command] if asking else [command]
    if _hiredis_pack is None:
        return b"".join(b"".join(conn.pack_command(*part)) for part in parts)
    return b"".join(_hiredis_pack(part) for part in parts)


def _refresh_quietly(client: Any) -> None:
    """Reload the slot table after a connection error, if the cluster answers."""
    with suppress(Exception):  # best effort: the caller gets the original error
        client.nodes_manager.initialize()
