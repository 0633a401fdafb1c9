"""Prometheus metrics: a tiny process-local registry, an observer of the request
timer (``api.http.timing``), and a snapshot of what Redis and the checkpoints say.

``GET /metrics`` serves the text exposition format 0.0.4. It needs the admin
role when API keys are configured (Prometheus: ``authorization: {credentials:
<key>}``); with no keys every caller is admin, as everywhere in the API.

Process-local series (this API process only; each replica counts its own):

    ledger_http_requests_total{method,route,status}         counter
        (method: GET HEAD POST PUT PATCH DELETE OPTIONS or ``other``; route: the
        route template or ``<unmatched>``)
    ledger_http_request_duration_seconds{method,route}      histogram
    ledger_appends_total{result,reason}                      counter (``record_append``)

Series read from Redis (the same for every replica) and MongoDB checkpoints;
``queue`` is a configured queue (enqueueing to any other name is refused), so
clients cannot add label values:

    ledger_queue_length / _pending / _lag / _consumers{queue}           gauges
    ledger_queue_processed_total / _failed_total / _retried_total /
        _dead_total{queue}                                             counters
    ledger_group_pending / _lag{group,level}                           gauges (all partitions)
    ledger_group_lag_seconds{group}                                    gauge
    ledger_dead_letters                                                gauge
    ledger_projection_pending / _lag / _lag_seconds{projection}        gauges
    ledger_projection_checkpoint_timestamp_seconds{projection}         gauge

Lag (entries) is what the consumer group has not been handed yet (Redis 7's
``XINFO GROUPS`` lag; absent on Redis 6.2). Lag in time (``lag_ms``) is *now
minus the time of the oldest entry the group has not acknowledged* — the
oldest pending entry or the first undelivered one, whichever is older; stream
entry ids carry the millisecond they were appended. 0 when the group is
caught up.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp

from streams import keys
from streams.config import StreamsConfig
from streams.connection import RedisClient, translate
from streams.groups import parse_groups, pending_min
from streams.ids import EntryId, format_id, parse_id
from streams.times import iso_utc

from .timing import Observer, RequestTimer, Timed

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

Labels = tuple[tuple[str, str], ...]


# -- the exposition format -----------------------------------------------------------------
def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def fmt_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def sample(name: str, labels: Iterable[tuple[str, str]], value: float) -> str:
    pairs = ",".join(f'{k}="{escape(v)}"' for k, v in labels)
    return f"{name}{{{pairs}}} {fmt_value(value)}" if pairs else f"{name} {fmt_value(value)}"


class Exposition:
    """Collects families (``# HELP``/``# TYPE`` once each) and renders the text."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def family(self, name: str, kind: str, help_text: str) -> list[str]:
        if name not in self._families:
            self._families[name] = (kind, help_text, [])
        return self._families[name][2]

    def add(
        self,
        name: str,
        kind: str,
        help_text: str,
        value: float | None,
        labels: Iterable[tuple[str, str]] = (),
    ) -> None:
        lines = self.family(name, kind, help_text)
        if value is not None:
            lines.append(sample(name, labels, value))

    def render(self) -> str:
        out: list[str] = []
        for name, (kind, help_text, lines) in self._families.items():
            out.append(f"# HELP {name} {help_text.replace(chr(92), chr(92) * 2)}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(lines)
        return "\n".join(out) + "\n"


# -- the process-local registry ------------------------------------------------------------
@dataclass
class _Histogram:
    buckets: list[int]
    count: int = 0
    total: float = 0.0


@dataclass
class Registry:
    """Counters and histograms of this process; thread-safe, cheap to update."""

    buckets: tuple[float, ...] = DURATION_BUCKETS
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _counters: dict[str, dict[Labels, float]] = field(default_factory=dict)
    _histograms: dict[str, dict[Labels, _Histogram]] = field(default_factory=dict)
    _help: dict[str, str] = field(default_factory=dict)

    def inc(self, name: str, help_text: str, labels: Mapping[str, str], by: float = 1) -> None:
        key = tuple(labels.items())
        with self._lock:
            self._help.setdefault(name, help_text)
            series = self._counters.setdefault(name, {})
            series[key] = series.get(key, 0) + by

    def observe(self, name: str, help_text: str, labels: Mapping[str, str], value: float) -> None:
        key = tuple(labels.items())
        with self._lock:
            self._help.setdefault(name, help_text)
            series = self._histograms.setdefault(name, {})
            h = series.get(key)
            if h is None:
                h = series[key] = _Histogram([0] * len(self.buckets))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    h.buckets[i] += 1
            h.count += 1
            h.total += value

    def value(self, name: str, **labels: str) -> float:
        """A counter's current value (0 if never counted)."""
        with self._lock:
            return self._counters.get(name, {}).get(tuple(labels.items()), 0)

    def write(self, out: Exposition) -> None:
        with self._lock:
            for name, series in self._counters.items():
                lines = out.family(name, "counter", self._help[name])
                lines.extend(sample(name, k, v) for k, v in sorted(series.items()))
            for name, hseries in self._histograms.items():
                lines = out.family(name, "histogram", self._help[name])
                for k, h in sorted(hseries.items()):
                    for bound, n in zip(self.buckets, h.buckets, strict=True):
                        lines.append(sample(f"{name}_bucket", (*k, ("le", fmt_value(bound))), n))
                    lines.append(sample(f"{name}_bucket", (*k, ("le", "+Inf")), h.count))
                    lines.append(sample(f"{name}_sum", k, h.total))
                    lines.append(sample(f"{name}_count", k, h.count))


REGISTRY = Registry()

_REASON_RE = re.compile(r"[^a-z0-9_]")


def record_append(outcome: str, count: int = 1, registry: Registry | None = None) -> None:
    """Count appends: ``"accepted"``, or the refusal's error code (``insufficient_credits``…).

    Route modules call it once per append (or per batch item).
    """
    reason = _REASON_RE.sub("_", outcome.lower())[:64] or "unknown"
    result = "accepted" if reason == "accepted" else "refused"
    (registry or REGISTRY).inc(
        "ledger_appends_total",
        "Appends by result and refusal reason",
        {"result": result, "reason": "" if result == "accepted" else reason},
        count,
    )


# -- the timing middleware ------------------------------------------------------------------
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """The request method as a label: one of ``METHODS``, else ``other``.

    A client chooses the method (an ASGI server such as h11 passes any token
    through), so it must not grow the label set.
    """
    return method if method in METHODS else "other"


def status_label(status: int) -> str:
    """The status as a label: ``100``-``599``, else ``other``."""
    return str(status) if 100 <= status <= 599 else "other"


def request_observer(registry: Registry | None = None) -> Observer:
    """Count and time each finished request by route template and status (a
    ``RequestTimer`` observer).

    Every label has a bounded set of values whatever the client sends: the
    template is the matched route's path (``/api/dlq/{entry_id}/requeue``), so
    ids never become label values, and unmatched paths count as ``<unmatched>``;
    the method is ``method_label``'s, the status ``status_label``'s.
    """
    target = registry or REGISTRY

    def observe(timed: Timed) -> None:
        route = timed.scope.get("route")
        template = getattr(route, "path", None) if route is not None else None
        labels = {
            "method": method_label(str(timed.scope.get("method", ""))),
            "route": template if isinstance(template, str) else "<unmatched>",
        }
        target.inc(
            "ledger_http_requests_total",
            "HTTP requests by route and status",
            {**labels, "status": status_label(timed.status)},
        )
        target.observe(
            "ledger_http_request_duration_seconds",
            "HTTP request latency by route",
            labels,
            timed.seconds,
        )

    return observe


class MetricsMiddleware(RequestTimer):
    """The request timer with only the metrics observer (for an app without access logs)."""

    def __init__(self, app: ASGIApp, registry: Registry | None = None) -> None:
        super().__init__(app, [request_observer(registry)])


# -- what Redis says about consumer groups ---------------------------------------------------


@dataclass(slots=True)
class GroupLevel:
    pending: int = 0
    lag: int | None = 0


@dataclass(slots=True)
class GroupStatus:
    """One consumer group over every stream: what it still owes."""

    group: str
    pending: int = 0
    lag: int | None = 0
    """Entries not delivered yet; None when Redis (6.2) can't tell."""
    oldest_ms: int | None = None
    """Append time of the oldest entry not acknowledged; None: caught up."""
    levels: dict[str, GroupLevel] = field(default_factory=dict)

    def lag_ms(self, now_ms: int) -> int:
        return 0 if self.oldest_ms is None else max(0, now_ms - self.oldest_ms)

    def as_dict(self, now_ms: int) -> dict[str, Any]:
        return {
            "group": self.group,
            "pending": self.pending,
            "lag": self.lag,
            "lag_ms": self.lag_ms(now_ms),
            "oldest_unacked_at": iso_utc(self.oldest_ms),
        }


def group_status(
    client: RedisClient, partitions: int, groups: Sequence[str]
) -> dict[str, GroupStatus]:
    """Pending, lag and the oldest unacknowledged entry of each group (3 pipelined trips)."""
    streams = [
        (keys.stream(p, lv), keys.LEVEL_NAMES[lv])
        for p in keys.partitions(partitions)
        for lv in keys.LEVELS_DESC
    ]
    out = {g: GroupStatus(group=g) for g in groups}
    with translate():
        pipe = client.pipeline(transaction=False)
        for stream, _ in streams:
            pipe.xinfo_groups(stream)
        infos = pipe.execute(raise_on_error=False)
        # per (group, stream): pending, lag (None: unknown), last delivered id, group exists
        rows: list[tuple[str, str, str, int, int | None, EntryId, bool]] = []
        for (stream, level), info in zip(streams, infos, strict=True):
            found = {} if isinstance(info, Exception) else parse_groups(info)
            for g in groups:
                i = found.get(g)
                if i is None:  # no group (yet): everything in the stream is undelivered
                    rows.append((g, stream, level, 0, None, (0, 0), False))
                else:
                    rows.append((g, stream, level, i.pending, i.lag, i.last_delivered, True))
        pipe = client.pipeline(transaction=False)
        for g, stream, _, pending, _, last, exists in rows:
            pipe.xrange(stream, min="(" + format_id(last), max="+", count=1)
            if pending:
                pipe.xpending(stream, g)
            if not exists:
                pipe.xlen(stream)
        replies = iter(pipe.execute(raise_on_error=False))
    for g, _, level, pending, lag, _, exists in rows:
        status = out[g]
        first = next(replies)
        oldest: list[int] = []
        if isinstance(first, list) and first:
            oldest.append(parse_id(first[0][0])[0])
        if pending:
            least = pending_min(next(replies))
            if least is not None:
                oldest.append(least[0])
        if not exists:
            length = next(replies)
            lag = int(length) if isinstance(length, int) else 0
        elif lag is None and not (isinstance(first, list) and first):
            lag = 0  # nothing undelivered: known even where Redis (6.2) reports no lag
        status.pending += pending
        status.lag = None if status.lag is None or lag is None else status.lag + lag
        lv = status.levels.setdefault(level, GroupLevel())
        lv.pending += pending
        lv.lag = None if lv.lag is None or lag is None else lv.lag + lag
        if oldest and (status.oldest_ms is None or min(oldest) < status.oldest_ms):
            status.oldest_ms = min(oldest)
    return out


def projection_groups() -> dict[str, str]:
    """projection name -> its consumer group."""
    from projections.runner import all_projections, group_of

    return {p.name: group_of(p) for p in all_projections()}


def projections_status(
    client: RedisClient, partitions: int, db: Any, now_ms: int | None = None
) -> list[dict[str, Any]]:
    """Per projection: its group's pending, lag, lag_ms and the last checkpoint time."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    names = projection_groups()
    status = group_status(client, partitions, list(names.values()))
    checkpoints: dict[str, Any] = {}
    if db is not None:
        from pymongo.errors import PyMongoError

        from projections.store import CHECKPOINTS

        try:
            for doc in db[CHECKPOINTS].find({"_id": {"$in": list(names)}}, {"updated_at": 1}):
                checkpoints[doc["_id"]] = doc.get("updated_at")
        except PyMongoError as exc:  # Redis still tells the lag; the time is unknown
            log.warning("checkpoints unavailable: %s", exc)
    out = []
    for name, group in names.items():
        at = checkpoints.get(name)
        if isinstance(at, datetime) and at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        out.append(
            {
                "projection": name,
                **status[group].as_dict(now),
                "checkpoint_at": iso_utc(round(at.timestamp() * 1000)) if at else None,
            }
        )
    return out


def queues_status(client: RedisClient, config: StreamsConfig) -> dict[str, dict[str, Any]]:
    """``streams.status.queue_stats``, with lag filled in where it says None because the
    workers group does not exist yet (everything then is undelivered) or Redis is 6.2
    and nothing is undelivered."""
    from streams.status import queue_stats

    stats = queue_stats(client, config)
    if any(s.get("lag") is None for s in stats.values()):
        levels = group_status(client, config.partitions, ["workers"])["workers"].levels
        for spec in config.queues:
            s = stats.get(spec.name)
            level = levels.get(keys.LEVEL_NAMES[spec.priority])
            if s is not None and s.get("lag") is None and level is not None:
                s["lag"] = level.lag
    return stats


# -- the whole page ------------------------------------------------------------------------
def render(
    client: RedisClient, config: StreamsConfig, db: Any, registry: Registry | None = None
) -> str:
    """Every series, as exposition text (blocking: run it on the thread pool)."""
    from streams.deadletters import count_dead

    now = int(time.time() * 1000)
    out = Exposition()
    stats = queues_status(client, config)
    gauges = {
        "length": "Entries in the queue's priority streams (XLEN, all partitions)",
        "pending": "Entries delivered to workers and not yet acknowledged",
        "lag": "Entries not yet delivered to workers (Redis 7)",
        "consumers": "Consumers in the workers group (largest over partitions)",
    }
    counters = {
        "processed": "Tasks and events processed",
        "failed": "Failed attempts",
        "retried": "Attempts scheduled for retry",
        "dead": "Entries dead-lettered",
    }
    for queue, s in stats.items():
        for key, help_text in gauges.items():
            out.add(f"ledger_queue_{key}", "gauge", help_text, s.get(key), [("queue", queue)])
        for key, help_text in counters.items():
            out.add(
                f"ledger_queue_{key}_total", "counter", help_text, s.get(key), [("queue", queue)]
            )
    groups = group_status(client, config.partitions, ["workers"])
    for g in groups.values():
        for level, lv in g.levels.items():
            pair = [("group", g.group), ("level", level)]
            out.add(
                "ledger_group_pending",
                "gauge",
                "Pending entries of a group per level",
                lv.pending,
                pair,
            )
            out.add(
                "ledger_group_lag",
                "gauge",
                "Undelivered entries of a group per level",
                lv.lag,
                pair,
            )
        out.add(
            "ledger_group_lag_seconds",
            "gauge",
            "Age of the oldest entry the group has not acknowledged",
            g.lag_ms(now) / 1000,
            (("group", g.group),),
        )
    from streams import keys as stream_keys

    pipe = client.pipeline(transaction=False)
    pipe.hget(stream_keys.SCHEDULE_STATS, "fired")
    pipe.zcard(stream_keys.SCHEDULES)
    fired, scheduled = pipe.execute()
    out.add(
        "ledger_schedule_fired_total",
        "counter",
        "Recurring schedule ticks fired (each enqueued one task)",
        int(fired or 0),
    )
    out.add("ledger_schedules", "gauge", "Recurring schedules defined", int(scheduled))
    out.add(
        "ledger_dead_letters",
        "gauge",
        "Dead letters kept (all partitions)",
        count_dead(client, config.partitions),
    )
    for p in projections_status(client, config.partitions, db, now):
        labels = [("projection", str(p["projection"]))]
        out.add(
            "ledger_projection_pending",
            "gauge",
            "Pending entries of a projector group",
            p["pending"],
            labels,
        )
        out.add(
            "ledger_projection_lag",
            "gauge",
            "Entries not yet delivered to a projector",
            p["lag"],
            labels,
        )
        out.add(
            "ledger_projection_lag_seconds",
            "gauge",
            "Age of the oldest entry a projector has not acknowledged",
            p["lag_ms"] / 1000,
            labels,
        )
        if p["checkpoint_at"] is not None:
            at = datetime.fromisoformat(p["checkpoint_at"].replace("Z", "+00:00"))
            out.add(
                "ledger_projection_checkpoint_timestamp_seconds",
                "gauge",
                "When the projection last wrote its checkpoint",
                at.timestamp(),
                labels,
            )
        else:
            out.family(
                "ledger_projection_checkpoint_timestamp_seconds",
                "gauge",
                "When the projection last wrote its checkpoint",
            )
    (registry or REGISTRY).write(out)
    return out.render()


def middleware() -> list[Any]:
    """The observability middleware for ``Starlette(middleware=...)``, outermost first:
    request ids, then one request timer feeding the access log and the metrics."""
    from starlette.middleware import Middleware

    from ..jsonlog import RequestIdMiddleware, log_access

    return [
        Middleware(RequestIdMiddleware),
        Middleware(RequestTimer, observers=(log_access, request_observer())),
    ]


def instrument(app: Any) -> Any:
    """Add ``middleware()`` to a Starlette app not yet started (idempotent)."""
    present = {m.cls for m in app.user_middleware}
    for m in reversed(middleware()):  # add_middleware puts each outermost
        if m.cls not in present:
            app.add_middleware(m.cls, *m.args, **m.kwargs)
    return app


__all__ = [
    "CONTENT_TYPE",
    "METHODS",
    "REGISTRY",
    "Exposition",
    "GroupStatus",
    "MetricsMiddleware",
    "Registry",
    "group_status",
    "instrument",
    "method_label",
    "middleware",
    "projections_status",
    "queues_status",
    "record_append",
    "render",
    "request_observer",
    "status_label",
]
