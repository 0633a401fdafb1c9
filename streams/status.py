"""Task status and queue statistics, read back from Redis.

Stream-level figures (length, pending, lag, consumers) belong to the queue's
priority level: queues that share a priority share its streams. Counters,
rate and latency are per queue name.
"""

from __future__ import annotations

import time
from typing import Any

from redis.exceptions import ResponseError

from ledger.tasks import Priority

from . import finished, keys
from .config import StreamsConfig
from .connection import RedisClient, translate
from .groups import GroupInfo, groups
from .replies import text
from .times import iso_utc

TASK_STATUSES = (
    "waiting",
    "queued",
    "scheduled",
    "processing",
    "retrying",
    "completed",
    "failed",
    "cancelled",
)
"""Every status a task record can show (``GET /api/queue/status``)."""
STATUS_FIELDS = (
    "status",
    "attempts",
    "queue_name",
    "task_type",
    "enqueued_at",
    "started_at",
    "finished_at",
    "last_error",
    "due_at",
    "retry_at",
    "depends_on",
)
WHERE_FIELDS = ("priority", "entry")
"""Where a queued task's entry is: a worker that reads it fresh writes nothing
before it settles (``Worker._process``), so "processing" is read from the
stream's pending list (``_pending``)."""
TIME_FIELDS = {"enqueued_at", "started_at", "finished_at", "due_at", "retry_at"}
COUNTERS = (
    "processed",
    "failed",
    "retried",
    "dead",
    "waiting",
    "cancelled",
    "released",
    "dependents_cancelled",
)
"""Per queue, in ``ledger:{T}:stats``: ``waiting`` is a gauge (tasks waiting for
their parents now), the others count since the start (``lua/settle.lua`` through
the worker's ``Stats``; ``lua/deps.lua`` for the last four)."""


def task_status(client: RedisClient, partitions: int, task_id: str) -> dict[str, Any] | None:
    """The original status record of a task, or None if unknown (or expired).

    A completed task's record may be its compact field in a done bucket
    (``streams.finished``). A task recorded as queued whose entry is pending in
    the ``workers`` group is being processed, on its first attempt (later ones
    are written by begin.lua): "processing", attempt 1, started when delivered."""
    if not isinstance(task_id, str) or not 0 < len(task_id) <= 128:
        return None
    p = keys.partition_of(task_id, partitions)
    with translate():
        got = client.hmget(keys.task(p, task_id), [*STATUS_FIELDS, *WHERE_FIELDS])
        values, (priority, entry) = got[: len(STATUS_FIELDS)], got[len(STATUS_FIELDS) :]
        if values[0] == b"waiting":
            awaited = sorted(text(v) for v in client.smembers(keys.deps(p, task_id)))
    if values[0] is None:
        raw = finished.lookup(client, p, task_id, int(time.time() * 1000))
        if raw is None:
            return None
        values = finished.status_values(raw, STATUS_FIELDS)
    elif values[0] == b"queued" and entry and priority:
        values = _pending(client, p, text(priority), text(entry), values)
    out: dict[str, Any] = {"task_id": task_id}
    for name, raw_value in zip(STATUS_FIELDS, values, strict=True):
        value = text(raw_value) if raw_value is not None else None
        if name in TIME_FIELDS:
            out[name] = iso_utc(int(value)) if value else None
        elif name == "attempts":
            out[name] = int(value or 0)
        elif name == "depends_on":
            out[name] = value.split(",") if value else []
        else:
            out[name] = value or None
    out["waiting_for"] = awaited if values[0] == b"waiting" else []
    return out


def _pending(
    client: RedisClient, p: keys.Partition, priority: str, entry: str, values: list[Any]
) -> list[Any]:
    """``values`` as processing when ``entry`` is delivered to a worker (pending)."""
    try:
        stream = keys.stream(p, Priority(int(priority)))
    except ValueError:
        return values
    with translate():
        try:
            rows = client.xpending_range(stream, "workers", min=entry, max=entry, count=1)
        except ResponseError:  # no group yet: not delivered
            return values
    if not rows:
        return values
    row = rows[0]
    out = list(values)
    out[STATUS_FIELDS.index("status")] = b"processing"
    out[STATUS_FIELDS.index("attempts")] = max(1, int(row["times_delivered"]))
    out[STATUS_FIELDS.index("started_at")] = int(time.time() * 1000) - int(
        row["time_since_delivered"]
    )
    return out


def _percentile(sorted_values: list[int], q: float) -> int | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def queue_stats(
    client: RedisClient,
    config: StreamsConfig,
    group: str = "workers",
    queue_name: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Per queue: length, pending, lag, consumers, counters, rate and latency."""
    specs = [q for q in config.queues if queue_name in (None, q.name)]
    bucket = int(time.time() * 1000) // 10000
    out: dict[str, dict[str, Any]] = {}
    with translate():
        for spec in specs:
            pipe = client.pipeline(transaction=False)
            for p in keys.partitions(config.partitions):
                stream = keys.stream(p, spec.priority)
                pipe.xlen(stream)
                pipe.hgetall(keys.stats(p))
                pipe.lrange(keys.latencies(p, spec.name), 0, -1)
                pipe.hgetall(keys.throughput(p, spec.name))
            replies = pipe.execute()
            infos = [
                groups(client, keys.stream(p, spec.priority)).get(group)
                for p in keys.partitions(config.partitions)
            ]
            out[spec.name] = _summarise(spec.name, spec.priority, replies, infos, bucket)
    return out


def _summarise(
    name: str, priority: Priority, replies: list[Any], infos: list[GroupInfo | None], bucket: int
) -> dict[str, Any]:
    """A group missing on a stream (not created yet) counts nothing and leaves lag unknown."""
    length = 0
    counters = dict.fromkeys(COUNTERS, 0)
    latencies: list[int] = []
    recent = 0
    for i in range(0, len(replies), 4):
        xlen, stats, lat, tput = replies[i : i + 4]
        length += int(xlen)
        for counter in counters:
            counters[counter] += int(stats.get(f"{counter}:{name}".encode(), 0))
        latencies.extend(int(v) for v in lat)
        recent += sum(int(v) for k, v in tput.items() if bucket - 6 <= int(k) < bucket)
    latencies.sort()
    found = [g for g in infos if g is not None]
    lags = [g.lag if g is not None else None for g in infos]
    return {
        "queue_name": name,
        "priority": priority.name,
        "length": length,
        "pending": sum(g.pending for g in found),
        "lag": _total_lag(lags),
        "consumers": max((g.consumers for g in found), default=0),
        **counters,
        "rate_per_s": round(recent / 60, 2),
        "latency_ms": {
            "p50": _percentile(latencies, 0.5),
            "p95": _percentile(latencies, 0.95),
            "p99": _percentile(latencies, 0.99),
        },
    }


def _total_lag(lags: list[int | None]) -> int | None:
    """Entries not yet delivered to the group; None where Redis (6.2) can't tell."""
    known = [lag for lag in lags if lag is not None]
    return sum(known) if len(known) == len(lags) else None
