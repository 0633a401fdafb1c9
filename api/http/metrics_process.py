"""Metrics of ``ledger worker``, ``ledger project`` and ``ledger scheduler``: each
process serves its own on ``--metrics-port`` (``prometheus_client``'s HTTP
exporter, ``GET /metrics``, text 0.0.4), off unless the option is given.

Why an exporter per process rather than a push of their counters to Redis that
the API would serve:

- Prometheus' own model is pull: every process is a target with its own ``up``
  series, so a worker that died or hangs is visible at once (``up == 0``, or
  the scrape times out). Pushed counters outlive their process: the API would
  keep serving a dead worker's last numbers until some TTL ran out, and an
  alert on a missing process would have to be built on that TTL.
- Nothing is added to Redis' hot path or memory (no per-process keys to write
  every few seconds, expire, and spread over a Cluster's slots), and an outage
  of Redis does not also blind the metrics of the processes that report it.
- The standard process series (``process_cpu_seconds_total``,
  ``process_resident_memory_bytes``, ``process_open_fds``,
  ``process_start_time_seconds``, ``python_gc_*``) come for free and belong to
  one process; ``process_start_time_seconds`` shows restarts.
- What is the same for every process (queue depth, lag, processed/failed
  counts per queue, dead letters, projection lag) is already in Redis and is
  served once by the API's ``/metrics``; the processes only report what only
  they know.

The cost: one port per process to list in Prometheus' scrape configuration
(``static_configs`` or service discovery); several processes on one host need
different ports. The exporter has no authentication and listens on
``--metrics-host`` (``127.0.0.1`` unless told otherwise: ``0.0.0.0`` in a
container whose port is published only to Prometheus).

Series (no per-process labels: Prometheus adds ``job`` and ``instance``):

    ledger worker:
        ledger_worker_consumers                      gauge    consumer threads running
        ledger_worker_processed_total                counter  deliveries handled successfully
        ledger_worker_forgotten_consumers_total      counter  dead consumers removed from the group
    ledger project:
        ledger_projector_processed_total{projection} counter  deliveries acknowledged
        ledger_projector_applied_total{projection}   counter  events written to the read model
    ledger scheduler:
        ledger_scheduler_fired_total                 counter  recurring schedule ticks fired here
        ledger_scheduler_missing_total               counter  due delayed tasks with no record
    every one: ``process_*``, ``python_gc_*``, ``python_info``

The counters are read from the running objects at each scrape (nothing is
counted twice) and start at 0 with the process; use ``rate()``/``increase()``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import settings as cfg
from ..settings import EnvError, add_option

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from streams.scheduler import Scheduler
    from streams.worker import Worker

log = logging.getLogger(__name__)

PORT_ENV = "LEDGER_METRICS_PORT"
HOST_ENV = "LEDGER_METRICS_HOST"


def add_options(parser: argparse.ArgumentParser) -> None:
    """``--metrics-port`` and ``--metrics-host`` of ``worker``, ``project`` and ``scheduler``."""
    add_option(
        parser,
        "--metrics-port",
        env=PORT_ENV,
        parse=cfg.integer(1, 65535),
        default=None,
        shown_default="none: no exporter",
        help="serve this process's Prometheus metrics on http://HOST:PORT/metrics",
    )
    add_option(
        parser,
        "--metrics-host",
        env=HOST_ENV,
        parse=cfg.host,
        default="127.0.0.1",
        help="address the metrics exporter binds (it has no authentication)",
    )


def _families() -> Any:
    """``prometheus_client.core``, imported when first collected: building ``ledger``'s
    parser (which adds the options above) imports no ``prometheus_client``."""
    from prometheus_client import core

    return core


class WorkerCollector:
    """``ledger worker``: its consumer threads' counts."""

    def __init__(self, workers: Callable[[], Sequence[Worker]]) -> None:
        self.workers = workers

    def collect(self) -> Iterator[Any]:
        core = _families()
        running = list(self.workers())
        yield core.GaugeMetricFamily(
            "ledger_worker_consumers", "Consumer threads running in this process", len(running)
        )
        yield core.CounterMetricFamily(
            "ledger_worker_processed",
            "Deliveries this process handled successfully",
            value=sum(w.processed for w in running),
        )
        yield core.CounterMetricFamily(
            "ledger_worker_forgotten_consumers",
            "Dead consumers this process removed from its group",
            value=sum(w.forgotten for w in running),
        )


class ProjectorCollector:
    """``ledger project``: per projection, deliveries acknowledged and events written."""

    def __init__(self, projectors: Sequence[tuple[str, Worker]]) -> None:
        self.projectors = projectors

    def collect(self) -> Iterator[Any]:
        core = _families()
        processed = core.CounterMetricFamily(
            "ledger_projector_processed",
            "Deliveries this projector acknowledged",
            labels=("projection",),
        )
        applied = core.CounterMetricFamily(
            "ledger_projector_applied",
            "Events this projector wrote to its read model",
            labels=("projection",),
        )
        for name, w in self.projectors:
            processed.add_metric((name,), w.processed)
            applied.add_metric((name,), getattr(w.processor, "applied", 0))
        yield processed
        yield applied


class SchedulerCollector:
    """``ledger scheduler``: ticks fired, due tasks found without a record."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[Any]:
        core = _families()
        yield core.CounterMetricFamily(
            "ledger_scheduler_fired",
            "Recurring schedule ticks this scheduler fired",
            value=self.scheduler.fired,
        )
        yield core.CounterMetricFamily(
            "ledger_scheduler_missing",
            "Due delayed tasks this scheduler found without a record (dropped)",
            value=self.scheduler.missing,
        )


@dataclass
class Exporter:
    """A running exporter; ``close`` stops listening."""

    host: str
    port: int
    registry: CollectorRegistry
    _server: Any

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def registry_for(collector: Any) -> CollectorRegistry:
    """``collector`` with the process collectors."""
    from prometheus_client import (
        GCCollector,
        PlatformCollector,
        ProcessCollector,
        disable_created_metrics,
    )
    from prometheus_client.registry import CollectorRegistry

    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(collector)
    return registry


def start(args: argparse.Namespace, collector: Any) -> Exporter | None:
    """Serve ``collector`` (with the process collectors) if ``--metrics-port`` is set;
    None if it is not. A port that cannot be bound is an ``EnvError`` (exit code 2)."""
    port = getattr(args, "metrics_port", None)
    if port is None:
        return None
    from prometheus_client import start_http_server

    host = args.metrics_host
    registry = registry_for(collector)
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise EnvError(f"--metrics-port {port}: cannot listen on {host}: {exc}") from exc
    log.info("metrics on http://%s:%d/metrics", host, port)
    return Exporter(host, port, registry, server)


__all__ = [
    "HOST_ENV",
    "PORT_ENV",
    "Exporter",
    "ProjectorCollector",
    "SchedulerCollector",
    "WorkerCollector",
    "add_options",
    "registry_for",
    "start",
]
