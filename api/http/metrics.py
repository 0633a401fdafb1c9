"""Prometheus metrics on ``prometheus_client``: the request and append counters of
the API processes, and a collector for what Redis and the MongoDB checkpoints say.

``GET /metrics`` serves the text exposition format 0.0.4. It needs the admin
role when API keys are configured (Prometheus: ``authorization: {credentials:
<key>}``); with no keys every caller is admin, as everywhere in the API.

Counted in the API processes (``Instruments``):

    ledger_http_requests_total{method,route,status}         counter
        (method: GET HEAD POST PUT PATCH DELETE OPTIONS or ``other``; route: the
        route template or ``<unmatched>``; status: 100-599 or ``other``)
    ledger_http_request_duration_seconds{method,route}      histogram
    ledger_appends_total{result,reason}                      counter (``record_append``)
        (result: ``accepted``, ``replayed`` (an idempotent replay: not a refusal)
        or ``refused``; reason: the refusal's error code, ``other`` for a code this
        version does not know, empty unless refused)
    ledger_http_processes                                   gauge (API processes
        serving: uvicorn's worker processes under ``ledger serve --workers N``)

Every API process answers with the same totals. ``ledger serve`` runs
``prometheus_client``'s multiprocess mode: it creates an empty directory for
the serve (``PROMETHEUS_MULTIPROC_DIR``, removed when it stops), each uvicorn
worker process writes its counters to its own memory-mapped files there, and
the process answering a scrape adds up every file, those of workers that died
(and were restarted) included, so totals never go backwards. A worker leaving
calls ``mark_process_dead`` (and a scrape does it for any that was killed), which
drops only its live gauge (``ledger_http_processes``). Without the variable (a
TestClient, an embedded app) the counters are this process's.

Read from Redis (the same for every replica) and MongoDB checkpoints at each
scrape, once, by the process answering it (``StoreCollector``; never multiplied
by the number of processes). ``queue`` is a configured queue (enqueueing to any
other name is refused), so clients cannot add label values:

    ledger_queue_length / _pending / _lag / _consumers / _waiting{queue}  gauges
    ledger_queue_processed_total / _failed_total / _retried_total /
        _dead_total / _cancelled_total / _released_total /
        _dependents_cancelled_total{queue}                             counters
    ledger_group_pending / _lag{group,level}                           gauges (all partitions)
    ledger_group_lag_seconds{group}                                    gauge
    ledger_group_level_lag_seconds{group,level}                        gauge (per priority)
    ledger_dead_letters                                                gauge
    ledger_schedule_fired_total                                        counter
    ledger_schedules                                                   gauge
    ledger_projection_pending / _lag / _lag_seconds{projection}        gauges
    ledger_projection_checkpoint_timestamp_seconds{projection}         gauge
    ledger_redis_up                                                    gauge (0: Redis
        could not be read for this scrape; the series above are then absent)

Lag (entries) is what the consumer group has not been handed yet (Redis 7's
``XINFO GROUPS`` lag; absent on Redis 6.2). Lag in time (``lag_ms``) is *now
minus the time of the oldest entry the group has not acknowledged* — the
oldest pending entry or the first undelivered one, whichever is older; stream
entry ids carry the millisecond they were appended. 0 when the group is
caught up.

Workers, projectors and schedulers serve their own process metrics on
``--metrics-port`` (``api.http.metrics_process``).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from starlette.types import ASGIApp

from streams import keys
from streams.config import StreamsConfig
from streams.connection import RedisClient, translate
from streams.groups import parse_groups, pending_min
from streams.ids import EntryId, format_id, parse_id
from streams.times import iso_utc

from .timing import Observer, RequestTimer, Timed

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""``text/plain; version=0.0.4; charset=utf-8``"""

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

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

# ``_created`` series exist only outside multiprocess mode: without them the
# exposition is the same whether one process answers or many.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


# -- the API process's counters -----------------------------------------------------------
class Instruments:
    """The counters and histograms an API process updates, in their own registry.

    ``INSTRUMENTS`` is the one the app uses; a test may make its own (outside
    multiprocess mode: there, series of one name share their files).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ledger_http_requests",
            "HTTP requests by route and status",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "ledger_http_request_duration_seconds",
            "HTTP request latency by route",
            ("method", "route"),
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.appends = Counter(
            "ledger_appends",
            "Appends by result and refusal reason",
            ("result", "reason"),
            registry=self.registry,
        )
        self.processes = Gauge(
            "ledger_http_processes",
            "API worker processes alive (ledger serve --workers)",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        for result in ("accepted", "replayed"):  # present (at 0) before the first append
            self.appends.labels(result, "")

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value in this registry (0 if absent)."""
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    def label_sets(self, family: str) -> set[frozenset[tuple[str, str]]]:
        """The label sets of a family's series (``le`` left out)."""
        out: set[frozenset[tuple[str, str]]] = set()
        for metric in self.registry.collect():
            if metric.name in (family, family.removesuffix("_total")):
                out |= {
                    frozenset((k, v) for k, v in s.labels.items() if k != "le")
                    for s in metric.samples
                }
        return out


INSTRUMENTS = Instruments()


def multiprocess_dir() -> str | None:
    """The directory of multiprocess mode if this process counts in it, else None.

    The variable must have been set before ``prometheus_client`` was imported
    (``ledger serve`` sets it before uvicorn spawns its workers).
    """
    path = os.environ.get(MULTIPROC_ENV)
    live = bool(getattr(values.ValueClass, "_multiprocess", False))
    return path if path and live and os.path.isdir(path) else None


def process_started() -> None:
    """In multiprocess mode (``ledger serve``'s app factory): drop this process's
    live gauge (``ledger_http_processes``) when it exits; if it is killed, the next
    scrape does (``forget_dead_processes``)."""
    path = multiprocess_dir()
    if path is not None:
        import atexit

        atexit.register(mark_process_dead, os.getpid(), path)


_LIVE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def forget_dead_processes(path: str) -> list[int]:
    """``mark_process_dead`` for every process with live gauge files that no longer
    runs (SIGKILLed: no exit handler ran). Their counters stay counted."""
    gone: list[int] = []
    for name in os.listdir(path):
        m = _LIVE_FILE.match(name)
        if m is None:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            gone.append(pid)
        except PermissionError:  # runs, as another user
            continue
    for pid in set(gone):
        mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
    return sorted(set(gone))


_REASON_RE = re.compile(r"[^a-z0-9_]")
_known_codes: set[str] = set()
_codes_lock = threading.Lock()


def _is_known_code(code: str) -> bool:
    """Whether ``code`` is the code of a ``LedgerError`` class (the domain's refusals)."""
    if code in _known_codes:
        return True
    from ledger.errors import LedgerError

    with _codes_lock:
        todo: list[type[LedgerError]] = [LedgerError]
        while todo:
            cls = todo.pop()
            _known_codes.add(cls.code)
            todo.extend(cls.__subclasses__())
    return code in _known_codes


def record_append(outcome: str, count: int = 1, instruments: Instruments | None = None) -> None:
    """Count appends: ``"accepted"``, ``"duplicate"`` (an idempotent replay: counted
    as ``replayed``, not a refusal), or the refusal's error code
    (``insufficient_credits``…); a code no ``LedgerError`` has counts as ``other``.

    Route modules call it once per append (or per batch item).
    """
    reason = _REASON_RE.sub("_", outcome.lower())[:64] or "unknown"
    if reason == "accepted":
        labels = ("accepted", "")
    elif reason in ("duplicate", "replayed"):
        labels = ("replayed", "")
    else:
        labels = ("refused", reason if _is_known_code(reason) else "other")
    (instruments or INSTRUMENTS).appends.labels(*labels).inc(count)


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


UNMATCHED = "<unmatched>"


def route_label(scope: Any) -> str:
    """The matched route's template (``/api/dlq/{entry_id}/requeue``), else ``<unmatched>``."""
    route = scope.get("route")
    template = getattr(route, "path", None) if route is not None else None
    return template if isinstance(template, str) else UNMATCHED


def request_observer(instruments: Instruments | None = None) -> Observer:
    """Count and time each finished request by route template and status (a
    ``RequestTimer`` observer).

    Every label has a bounded set of values whatever the client sends: the
    template is the matched route's path, so ids never become label values, and
    unmatched paths count as ``<unmatched>``; the method is ``method_label``'s,
    the status ``status_label``'s.
    """
    target = instruments or INSTRUMENTS

    def observe(timed: Timed) -> None:
        method = method_label(str(timed.scope.get("method", "")))
        route = route_label(timed.scope)
        target.requests.labels(method, route, status_label(timed.status)).inc()
        target.duration.labels(method, route).observe(timed.seconds)

    return observe


class MetricsMiddleware(RequestTimer):
    """The request timer with only the metrics observer (for an app without access logs)."""

    def __init__(self, app: ASGIApp, instruments: Instruments | None = None) -> None:
        super().__init__(app, [request_observer(instruments)])


# -- what Redis says about consumer groups ---------------------------------------------------


@dataclass(slots=True)
class GroupLevel:
    pending: int = 0
    lag: int | None = 0
    oldest_ms: int | None = None
    """Append time of the level's oldest entry not acknowledged; None: caught up."""


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
        if oldest and (lv.oldest_ms is None or min(oldest) < lv.oldest_ms):
            lv.oldest_ms = min(oldest)
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
_QUEUE_GAUGES = {
    "length": "Entries in the queue's priority streams (XLEN, all partitions)",
    "pending": "Entries delivered to workers and not yet acknowledged",
    "lag": "Entries not yet delivered to workers (Redis 7)",
    "consumers": "Consumers in the workers group (largest over partitions)",
    "waiting": "Tasks waiting for their parents (depends_on)",
}
_QUEUE_COUNTERS = {
    "processed": "Tasks and events processed",
    "failed": "Failed attempts",
    "retried": "Attempts scheduled for retry",
    "dead": "Entries dead-lettered",
    "cancelled": "Tasks cancelled (by a client, or because a parent failed or was cancelled)",
    "released": "Waiting tasks released once every parent completed",
    "dependents_cancelled": "Waiting tasks cancelled because a parent failed or was cancelled",
}


class StoreCollector(Collector):
    """What Redis and the MongoDB checkpoints say, read when collected (one scrape:
    one read, by the process answering it). Blocking: run it on the thread pool."""

    def __init__(self, client: RedisClient, config: StreamsConfig, db: Any) -> None:
        self.client = client
        self.config = config
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Every family, or none if Redis cannot be read: ``ledger_redis_up`` says which.
        The API processes' own counters are served either way (a Redis outage is when
        the 5xx and refusal counts matter most)."""
        try:
            families = list(self._read())
        except Exception as exc:  # Redis down, a Cluster slot moving: this scrape only
            log.warning("metrics: Redis could not be read: %s", exc)
            families = []
        yield from families
        yield GaugeMetricFamily(
            "ledger_redis_up",
            "1 if this scrape read Redis; 0: it could not, and the series read from it are absent",
            1 if families else 0,
        )

    def _read(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        from streams.deadletters import count_dead

        client, config = self.client, self.config
        now = int(time.time() * 1000)
        stats = queues_status(client, config)
        names = [spec.name for spec in config.queues]  # configured queues only
        for key, help_text in _QUEUE_GAUGES.items():
            gauge = GaugeMetricFamily(f"ledger_queue_{key}", help_text, labels=("queue",))
            for queue in names:
                v = stats.get(queue, {}).get(key)
                if v is not None:
                    gauge.add_metric((queue,), v)
            yield gauge
        for key, help_text in _QUEUE_COUNTERS.items():
            counter = CounterMetricFamily(f"ledger_queue_{key}", help_text, labels=("queue",))
            for queue in names:
                v = stats.get(queue, {}).get(key)
                if v is not None:
                    counter.add_metric((queue,), v)
            yield counter
        groups = group_status(client, config.partitions, ["workers"])
        pending = GaugeMetricFamily(
            "ledger_group_pending",
            "Pending entries of a group per level",
            labels=("group", "level"),
        )
        lag = GaugeMetricFamily(
            "ledger_group_lag",
            "Undelivered entries of a group per level",
            labels=("group", "level"),
        )
        age = GaugeMetricFamily(
            "ledger_group_lag_seconds",
            "Age of the oldest entry the group has not acknowledged",
            labels=("group",),
        )
        level_age = GaugeMetricFamily(
            "ledger_group_level_lag_seconds",
            "Age of the oldest entry the group has not acknowledged, per priority level",
            labels=("group", "level"),
        )
        for g in groups.values():
            for level, lv in g.levels.items():
                pending.add_metric((g.group, level), lv.pending)
                if lv.lag is not None:
                    lag.add_metric((g.group, level), lv.lag)
                oldest = lv.oldest_ms
                level_age.add_metric(
                    (g.group, level), 0 if oldest is None else max(0, now - oldest) / 1000
                )
            age.add_metric((g.group,), g.lag_ms(now) / 1000)
        yield from (pending, lag, age, level_age)
        with translate():
            pipe = client.pipeline(transaction=False)
            pipe.hget(keys.SCHEDULE_STATS, "fired")
            pipe.zcard(keys.SCHEDULES)
            fired, scheduled = pipe.execute()
        yield CounterMetricFamily(
            "ledger_schedule_fired",
            "Recurring schedule ticks fired (each enqueued one task)",
            value=int(fired or 0),
        )
        yield GaugeMetricFamily("ledger_schedules", "Recurring schedules defined", int(scheduled))
        yield GaugeMetricFamily(
            "ledger_dead_letters",
            "Dead letters kept (all partitions)",
            count_dead(client, config.partitions),
        )
        families = {
            "pending": GaugeMetricFamily(
                "ledger_projection_pending",
                "Pending entries of a projector group",
                labels=("projection",),
            ),
            "lag": GaugeMetricFamily(
                "ledger_projection_lag",
                "Entries not yet delivered to a projector",
                labels=("projection",),
            ),
            "lag_ms": GaugeMetricFamily(
                "ledger_projection_lag_seconds",
                "Age of the oldest entry a projector has not acknowledged",
                labels=("projection",),
            ),
            "checkpoint_at": GaugeMetricFamily(
                "ledger_projection_checkpoint_timestamp_seconds",
                "When the projection last wrote its checkpoint",
                labels=("projection",),
            ),
        }
        for p in projections_status(client, config.partitions, self.db, now):
            labels = (str(p["projection"]),)
            families["pending"].add_metric(labels, p["pending"])
            if p["lag"] is not None:
                families["lag"].add_metric(labels, p["lag"])
            families["lag_ms"].add_metric(labels, p["lag_ms"] / 1000)
            if p["checkpoint_at"] is not None:
                at = datetime.fromisoformat(p["checkpoint_at"].replace("Z", "+00:00"))
                families["checkpoint_at"].add_metric(labels, at.timestamp())
        yield from families.values()


class _Merged(Collector):
    """Another registry's families, collected as one collector of this registry."""

    def __init__(self, source: CollectorRegistry | MultiProcessCollector) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        return iter(self.source.collect())


def scrape_registry(
    client: RedisClient, config: StreamsConfig, db: Any, instruments: Instruments | None = None
) -> CollectorRegistry:
    """A registry for one scrape: every API process's counters (multiprocess mode:
    all the files; else ``instruments``) and one ``StoreCollector``."""
    registry = CollectorRegistry(auto_describe=False)
    path = multiprocess_dir() if instruments is None else None
    if path is not None:
        forget_dead_processes(path)
        registry.register(_Merged(MultiProcessCollector(None, path=path)))  # type: ignore[no-untyped-call]
    else:
        registry.register(_Merged((instruments or INSTRUMENTS).registry))
    registry.register(StoreCollector(client, config, db))
    return registry


def render(
    client: RedisClient, config: StreamsConfig, db: Any, instruments: Instruments | None = None
) -> str:
    """Every series, as exposition text 0.0.4 (blocking: run it on the thread pool)."""
    return generate_latest(scrape_registry(client, config, db, instruments)).decode("utf-8")


def middleware() -> list[Any]:
    """The observability middleware for ``Starlette(middleware=...)``, outermost first:
    request ids, then one request timer feeding the access log and the metrics."""
    from starlette.middleware import Middleware

    from ..jsonlog import RequestIdMiddleware, log_access

    INSTRUMENTS.processes.set(1)  # this process serves an app
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
    "DURATION_BUCKETS",
    "INSTRUMENTS",
    "METHODS",
    "MULTIPROC_ENV",
    "GroupStatus",
    "Instruments",
    "MetricsMiddleware",
    "StoreCollector",
    "forget_dead_processes",
    "group_status",
    "instrument",
    "method_label",
    "middleware",
    "multiprocess_dir",
    "process_started",
    "projections_status",
    "queues_status",
    "record_append",
    "render",
    "request_observer",
    "route_label",
    "scrape_registry",
    "status_label",
]
