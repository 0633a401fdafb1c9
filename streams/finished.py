"""The status of completed tasks, kept compact for the status retention.

A task's record is a hash of ~460 bytes of Redis memory. Once a task completes,
``lua/settle.lua`` replaces it by one field of a "done" bucket of its partition:
the task id (16 bytes when it is a uuid: ``packed_id``) mapped to
``enqueued|started-enqueued|finished-enqueued|attempts|due-enqueued|queue|type``
(ms, in base 36).

Buckets are hashes of at most ~512 fields, so that Redis keeps each as a listpack
(~60 bytes a task; a bigger hash becomes a hash table, ~115 bytes a task). A
*family* of buckets (``keys.done``) holds the tasks completed in one span of an
eighth of the status retention, spread over ``scale`` hashes by a hash of the task
id (``part_of``). A family starts with one hash; when settle.lua reports that a
hash of it holds ``SPLIT_AT`` fields, the worker sends later tasks to a new family
of twice the scale (``Scales``), so buckets stay small at any rate and few at a low
one. Families are listed in the partition's index (``keys.done_index``), scored
with the time they may go: the span's end plus the retention. A worker's sweep
drops a family past that time with UNLINK (freed off the main thread:
``drop_expired``); a key expiry one span later is the safety net. So a completed
task's status answers for at least the retention, and at most an eighth longer.

Tasks enqueued with an Idempotency-Key keep their hash (it is the record a repeat
must find), and so do tasks with parents (``depends_on``), failed and cancelled
ones: those are not the many.
"""

from __future__ import annotations

import re
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import keys
from .connection import RedisClient, translate
from .replies import text

BUCKETS_PER_RETENTION = 8
MIN_BUCKET_MS = 1000
SPLIT_AT = 384
"""Fields in one bucket at which its family's later tasks go to a family of twice
the scale: below Redis's default ``hash-max-listpack-entries`` (512), with room for
what other workers add before they hear of it."""
MAX_SCALE = 4096
_FIELDS = 7


@dataclass(frozen=True, slots=True)
class Family:
    """Where the tasks a worker completes now go (settle.lua's ARGV[5..7])."""

    name: str
    span: int
    """The number of its span of ``width_ms`` since the epoch (``span``)."""
    scale: int
    drop_at_ms: int
    """Its score in the index: after it, lookups ignore it and a sweep drops it."""
    expire_at_ms: int

    def part_for(self, task_id: str) -> str:
        return keys.done_part(self.name, part_of(task_id, self.scale))


def width_ms(retention_s: int) -> int:
    return max(MIN_BUCKET_MS, retention_s * 1000 // BUCKETS_PER_RETENTION)


def span(now_ms: int, retention_s: int) -> int:
    """The number of the span ``now_ms`` falls in."""
    return now_ms // width_ms(retention_s)


def family(p: keys.Partition, span_no: int, retention_s: int, scale: int = 1) -> Family:
    """The family of ``scale`` buckets for tasks completed in span ``span_no``: it
    may be dropped ``retention_s`` after the span's end."""
    width = width_ms(retention_s)
    drop = (span_no + 1) * width + retention_s * 1000
    return Family(keys.done(p, width, span_no, scale), span_no, scale, drop, drop + width)


def part_of(task_id: str, scale: int) -> int:
    """Which of a family's ``scale`` buckets holds ``task_id``."""
    return zlib.crc32(packed_id(task_id)) % scale if scale > 1 else 0


@dataclass
class Scales:
    """The scale a process uses per partition for the current span: 1 when a span
    starts, doubled each time settle.lua reports a bucket of the family in use
    holding ``SPLIT_AT`` fields. Shared by the worker threads of a process."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    current: dict[keys.Partition, tuple[int, int]] = field(default_factory=dict)
    """partition -> (span, scale)"""

    def scale(self, p: keys.Partition, span_no: int) -> int:
        with self.lock:
            at, scale = self.current.get(p, (span_no, 1))
            return scale if at == span_no else 1

    def observe(self, p: keys.Partition, span_no: int, used: int, longest: int) -> None:
        """settle.lua wrote into family ``(span_no, used)``; ``longest`` is the most
        fields one of its buckets now holds."""
        if longest < SPLIT_AT:
            return
        with self.lock:
            at, scale = self.current.get(p, (span_no, 1))
            if at != span_no:
                at, scale = span_no, 1
            if scale <= used:
                self.current[p] = (span_no, min(MAX_SCALE, 2 * used))


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
    return lookup_many(client, [(p, task_id)], now_ms).get(task_id)


def lookup_many(
    client: RedisClient, tasks: Sequence[tuple[keys.Partition, str]], now_ms: int
) -> dict[str, bytes]:
    """The bucket fields of those of ``tasks`` (partition, task id) that completed
    and are still kept, by task id: two pipelined round trips however many."""
    if not tasks:
        return {}
    parts = sorted({p for p, _ in tasks})
    with translate():
        pipe = client.pipeline(transaction=False)
        for p in parts:
            pipe.zrangebyscore(keys.done_index(p), now_ms, "+inf")
        live = dict(zip(parts, pipe.execute(), strict=True))
        asked: list[str] = []
        pipe = client.pipeline(transaction=False)
        for p, task_id in tasks:
            for name in live[p]:
                family_name = text(name)
                part = keys.done_part(family_name, part_of(task_id, _scale_of(family_name)))
                pipe.hget(part, packed_id(task_id))
                asked.append(task_id)
        found = pipe.execute() if asked else []
    return {task_id: raw for task_id, raw in zip(asked, found, strict=True) if raw is not None}


def _scale_of(family_name: str) -> int:
    return max(1, min(MAX_SCALE, int(family_name.rsplit(":", 1)[1])))


def drop_expired(client: RedisClient, parts: tuple[keys.Partition, ...], now_ms: int) -> int:
    """UNLINK the families of ``parts`` past their time (a big hash is freed off
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
                family_name = text(name)
                for i in range(_scale_of(family_name)):  # one key a command: Cluster pipelines
                    pipe.unlink(keys.done_part(family_name, i))
                pipe.zrem(keys.done_index(p), name)
                gone += 1
        if gone:
            pipe.execute()
    return gone
