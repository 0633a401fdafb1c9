"""Dead letters: list them across partitions, and requeue one.

A dead letter keeps the entry's own fields plus ``_stream``, ``_id`` (original
position), ``_group``, ``_error``, ``_attempts``, ``_at`` and ``_queue``. Its public
id is ``p<partition>:<entry id>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from . import keys
from .connection import RedisClient, translate
from .errors import UnknownDeadLetter
from .ids import parse_id
from .scripts import Scripts, run_many

DEAD_ID_RE = re.compile(r"^p(\d{1,4}):(\d{1,20}-\d{1,20})$")


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    id: str
    stream: str
    original_id: str
    group: str
    error: str
    attempts: int
    at_ms: int
    queue_name: str
    kind: str
    task_id: str | None
    task_type: str | None
    user_id: str | None


def _letter(p: int, entry_id: str, raw: dict[bytes, bytes]) -> DeadLetter:
    f = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}
    kind = f.get("k", "?")
    return DeadLetter(
        id=f"p{p}:{entry_id}",
        stream=f.get("_stream", ""),
        original_id=f.get("_id", ""),
        group=f.get("_group", ""),
        error=f.get("_error", ""),
        attempts=int(f.get("_attempts") or 0),
        at_ms=int(f.get("_at") or 0),
        queue_name=f.get("_queue", ""),
        kind=kind,
        task_id=f.get("id") if kind == "task" else None,
        task_type=f.get("ty") if kind == "task" else None,
        user_id=f.get("u") if kind != "task" else None,
    )


def _newest_first(d: DeadLetter) -> tuple[int, tuple[int, int], int]:
    """Sort key: time, then the entry id as numbers ("…-10" is newer than "…-2")."""
    p, _, entry_id = d.id.partition(":")
    return d.at_ms, parse_id(entry_id), int(p[1:])


def list_dead(client: RedisClient, partitions: int, limit: int = 100) -> list[DeadLetter]:
    """The newest ``limit`` dead letters of all partitions, newest first."""
    with translate():
        pipe = client.pipeline(transaction=False)
        for p in keys.partitions(partitions):
            pipe.xrevrange(keys.dead(p), count=limit)
        replies = pipe.execute()
    letters = [
        _letter(p, eid.decode(), raw) for p, entries in enumerate(replies) for eid, raw in entries
    ]
    letters.sort(key=_newest_first, reverse=True)
    return letters[:limit]


def count_dead(client: RedisClient, partitions: int) -> int:
    with translate():
        pipe = client.pipeline(transaction=False)
        for p in keys.partitions(partitions):
            pipe.xlen(keys.dead(p))
        return sum(pipe.execute())


def requeue(client: RedisClient, scripts: Scripts, partitions: int, dead_id: str) -> str:
    """Put a dead letter back on its stream; returns the new entry id."""
    m = DEAD_ID_RE.match(dead_id) if isinstance(dead_id, str) else None
    if not m or int(m.group(1)) >= partitions:
        raise UnknownDeadLetter(f"no dead letter {dead_id!r}")
    p, entry_id = keys.partitions(partitions)[int(m.group(1))], m.group(2)
    for _ in range(3):  # "changed": the entry under this id is not the one read (practically never)
        reply = _requeue_once(client, scripts, p, entry_id)
        if reply is None or reply[0] == b"missing":
            raise UnknownDeadLetter(f"no dead letter {dead_id!r}")
        if reply[0] == b"ok":
            return str(reply[1].decode())
    raise UnknownDeadLetter(f"dead letter {dead_id!r} kept changing while being requeued")


def _requeue_once(client: RedisClient, scripts: Scripts, p: keys.Partition, entry_id: str) -> Any:
    """Read the dead letter for the keys it names, then run ``requeue.lua`` on them
    (every key a script touches is declared: Redis Cluster); None when it is gone."""
    with translate():
        found: Any = client.xrange(keys.dead(p), entry_id, entry_id)
        if not found:
            return None
        raw: dict[bytes, bytes] = found[0][1]
        stream = raw.get(b"_stream")
        if not stream:
            return None
        task_id = raw.get(b"id") if raw.get(b"k") == b"task" else None
        task_keys = [] if task_id is None else [keys.task(p, task_id.decode())]
        return run_many(
            client,
            [
                (
                    scripts.requeue,
                    [keys.dead(p), keys.attempts(p), stream.decode(), *task_keys],
                    [entry_id, b"" if task_id is None else task_id],
                )
            ],
        )[0]
