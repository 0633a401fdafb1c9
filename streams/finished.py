"""The status of completed tasks, kept compact for the status retention.

A task's record is a hash of ~460 bytes of Redis memory. Once a task completes,
``lua/settle.lua`` replaces it by one field of its partition's current "done"
bucket (``keys.done``): the task id (16 bytes when it is a uuid: ``packed_id``) mapped to
``enqueued|started-enqueued|finished-enqueued|attempts|due-enqueued|queue|type``
(ms, in base 36), 65-120 bytes in all (a hash of up to 512 fields is a listpack,
a bigger one a hash table). A bucket spans an eighth of the status retention
(at least a second), is listed in the partition's index (``keys.done_index``,
scored with the time it may go: its end plus the retention) and is dropped with
UNLINK (freed off the main thread) by a worker's sweep once that time passed
(``drop_expired``); a key expiry one bucket later is the safety net. So a
completed task's status answers for at least the retention, and at most an eighth
longer.

Tasks enqueued with an Idempotency-Key keep their hash (it is the record a repeat
must find), and so do tasks with parents (``depends_on``), failed and cancelled
ones: those are not the many.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from . import keys
from .connection import RedisClient, translate
from .replies import text

BUCKETS_PER_RETENTION = 8
MIN_BUCKET_MS = 1000
_FIELDS = 7


@dataclass(frozen=True, slots=True)
class Bucket:
    """Where completed tasks go now (settle.lua's KEYS[9] and ARGV[5..6])."""

    key: str
    drop_at_ms: int
    """Its score in the index: after it, lookups ignore it and a sweep drops it."""
    expire_at_ms: int


def width_ms(retention_s: int) -> int:
    return max(MIN_BUCKET_MS, retention_s * 1000 // BUCKETS_PER_RETENTION)


def bucket(p: keys.Partition, now_ms: int, retention_s: int) -> Bucket:
    """The bucket a task completed at ``now_ms`` goes to: it may be dropped
    ``retention_s`` after the bucket's end."""
    width = width_ms(retention_s)
    n = now_ms // width
    drop = (n + 1) * width + retention_s * 1000
    return Bucket(keys.done(p, width, n), drop, drop + width)


def status_values(raw: bytes | str, fields: tuple[str, ...]) -> list[Any]:
    """A bucket field as the values of ``fields`` (``status.STATUS_FIELDS``), the
    way its hash held them; ValueError if it is not one settle.lua wrote."""
    parts = text(raw).split("|")
    if len(parts) != _FIELDS:
        raise ValueError(f"not a completed-task record: {text(raw)!r}")
    try:
        enq, started, finished, attempts, due = (int(v, 36) if v else None for v in parts[:5])
    except ValueError:
        raise ValueError(f"not a completed-task record: {text(raw)!r}") from None
    if enq is None or started is None or finished is None or attempts is None:
        raise ValueError(f"not a completed-task record: {text(raw)!r}")
    known: dict[str, bytes | None] = {
        "status": b"completed",
        "attempts": str(attempts).encode(),
        "queue_name": parts[5].encode(),
        "task_type": parts[6].encode(),
        "enqueued_at": str(enq).encode(),
        "started_at": str(enq + started).encode(),
        "finished_at": str(enq + finished).encode(),
        "due_at": None if due is None else str(enq + due).encode(),
    }
    return [known.get(name) for name in fields]


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def packed_id(task_id: str) -> bytes:
    """A task id as its bucket field: a (lower-case) uuid as its 16 bytes, as
    settle.lua writes it; any other id as it is."""
    if _UUID.fullmatch(task_id):
        return bytes.fromhex(task_id.replace("-", ""))
    return task_id.encode()


def lookup(client: RedisClient, p: keys.Partition, task_id: str, now_ms: int) -> bytes | None:
    """The bucket field of a completed task of partition ``p``, or None."""
    with translate():
        live = client.zrangebyscore(keys.done_index(p), now_ms, "+inf")
        if not live:
            return None
        pipe = client.pipeline(transaction=False)
        for key in live:
            pipe.hget(text(key), packed_id(task_id))
        found = pipe.execute()
    return next((v for v in found if v is not None), None)


def drop_expired(client: RedisClient, parts: tuple[keys.Partition, ...], now_ms: int) -> int:
    """UNLINK the buckets of ``parts`` past their time (a big one is freed off
    Redis's main thread, unlike a key expiry); returns how many went."""
    with translate():
        pipe = client.pipeline(transaction=False)
        for p in parts:
            pipe.zrangebyscore(keys.done_index(p), "-inf", now_ms)
        due = pipe.execute()
        gone = 0
        pipe = client.pipeline(transaction=False)
        for p, names in zip(parts, due, strict=True):
            for name in names:
                pipe.unlink(text(name))
                pipe.zrem(keys.done_index(p), name)
                gone += 1
        if gone:
            pipe.execute()
    return gone
