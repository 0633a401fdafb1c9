"""The ``ledger`` console script: ``main(argv) -> int`` with named exit codes.

Each subcommand is a thin call into the library; heavy imports happen inside it.
Options also read their environment variable (``LEDGER_<OPTION>``, and REDIS_URL,
MONGO_URL, MONGO_DB), named in each option's help: flags override the
environment. Nothing is read while the parser is built, so ``--help`` works
whatever the environment holds; a bad value is one line naming the variable
and exit code 2. On/off flags and the options of one-shot commands (demo,
replay, audit, stats, dlq) read no variable.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from streams.config import DEFAULT_PARTITIONS

from .. import settings as cfg
from ..http import metrics_process
from ..settings import MAX_MS, EnvError, Settings, add_option, env_value, resolve, source
from . import audit, serve
from .exits import RET_CONNECT, RET_ERROR, RET_IMPORT, RET_OK, RET_USAGE

log = logging.getLogger("ledger")


def _forget_idle_option(parser: argparse.ArgumentParser, who: str, group: str) -> None:
    """``--forget-idle-ms`` of ``worker`` and ``project`` (lua/forget.lua)."""
    add_option(
        parser,
        "--forget-idle-ms",
        env="LEDGER_FORGET_IDLE_MS",
        parse=cfg.integer(1000, MAX_MS),
        default=None,
        shown_default="10 x claim-idle-ms, at least 60000",
        help=f"remove {who} that holds nothing and was idle this long from {group}",
    )


def _common(p: argparse.ArgumentParser) -> None:
    """The connection options every command has; nothing is read until ``resolve``."""
    add_option(
        p,
        "--redis-url",
        env=cfg.REDIS_URL,
        parse=cfg.redis_url,
        default=None,
        shown_default="none",
        help="redis:// or redis+cluster:// URL",
    )
    add_option(
        p,
        "--mongo-url",
        env=cfg.MONGO_URL,
        parse=cfg.mongo_url,
        default=None,
        shown_default="none",
        help="MongoDB URL",
    )
    add_option(
        p, "--mongo-db", env=cfg.MONGO_DB, parse=cfg.db_name, default="ledger", help="database name"
    )
    add_option(
        p,
        "--partitions",
        env=cfg.PARTITIONS,
        parse=cfg.PARTITIONS_VALUE,
        default=DEFAULT_PARTITIONS,
        help="stream partitions; fixed for a deployment",
    )
    add_option(
        p,
        "--log-level",
        env=cfg.LOG_LEVEL,
        parse=cfg.choice(*cfg.LOG_LEVELS),
        default="INFO",
        help="one of " + ", ".join(cfg.LOG_LEVELS),
    )


def _settings(args: argparse.Namespace) -> Settings:
    """The settings of a command: its resolved options, plus LEDGER_COLLECTIONS (and
    LEDGER_API_KEYS for ``serve``, the only command that reads it)."""
    env = os.environ
    none: dict[str, str] = {}
    keys = env_value(env, cfg.API_KEYS, cfg.api_keys, none) if args.command == "serve" else none
    return Settings(
        redis_url=args.redis_url,
        mongo_url=args.mongo_url,
        mongo_db=args.mongo_db,
        partitions=args.partitions,
        api_keys=keys,
        extra_collections=env_value(env, cfg.COLLECTIONS, cfg.collections, ()),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ledger", description="Credit ledger on Redis Streams")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run everything embedded with a synthetic load")
    _common(demo)
    demo.add_argument("--users", type=int, default=200, help="synthetic accounts")
    demo.add_argument("--events", type=int, default=5000, help="synthetic credit events")
    demo.add_argument("--workers", type=int, default=2, help="worker processes")
    demo.add_argument("--keep", action="store_true", help="keep the data directory")
    demo.add_argument(
        "--once",
        action="store_true",
        help="exit after the first load and its proof (no continuous traffic)",
    )

    worker = sub.add_parser("worker", help="run task handlers (the `workers` group)")
    _common(worker)
    metrics_process.add_options(worker)
    add_option(
        worker,
        "--import",
        dest="imports",
        env="LEDGER_IMPORT",
        parse=cfg.module_names,
        default=(),
        shown_default="none",
        metavar="MODULE[,MODULE]",
        action=_Extend,
        help="import modules that register handlers (repeatable or comma-separated)",
    )
    add_option(
        worker,
        "--concurrency",
        env="LEDGER_CONCURRENCY",
        parse=cfg.integer(1, 1024),
        default=None,
        shown_default="the queues' configured workers",
        help="consumer threads",
    )
    add_option(
        worker,
        "--queues",
        env="LEDGER_QUEUES",
        parse=cfg.names(),
        default=None,
        shown_default="all",
        help="comma-separated queue names to serve",
    )
    worker.add_argument("--burst", action="store_true", help="exit once nothing is left")
    add_option(
        worker,
        "--max-attempts",
        env="LEDGER_MAX_ATTEMPTS",
        parse=cfg.integer(1, 1000),
        default=5,
        help="deliveries before an entry is dead-lettered",
    )
    add_option(
        worker,
        "--backoff-ms",
        env="LEDGER_BACKOFF_MS",
        parse=cfg.integer(1, MAX_MS),
        default=1000,
        help="first retry delay",
    )
    add_option(
        worker,
        "--claim-idle-ms",
        env="LEDGER_CLAIM_IDLE_MS",
        parse=cfg.integer(1, MAX_MS),
        default=60_000,
        help="take over entries of a consumer silent this long",
    )
    _forget_idle_option(worker, "a consumer", "the group")
    add_option(
        worker,
        "--status-ttl-s",
        env="LEDGER_STATUS_TTL_S",
        parse=cfg.integer(1, 10 * 365 * 24 * 3600),
        default=7 * 24 * 3600,
        help="keep a finished task's status this long (an Idempotency-Key's task: "
        "at least the idempotency window)",
    )

    project = sub.add_parser("project", help="build the MongoDB read models from the log")
    _common(project)
    metrics_process.add_options(project)
    add_option(
        project,
        "--only",
        env="LEDGER_ONLY",
        parse=cfg.names(),
        default=None,
        shown_default="all",
        help="comma-separated projections (balances,credit_scores,events)",
    )
    add_option(
        project,
        "--batch",
        env="LEDGER_BATCH",
        parse=cfg.integer(1, 100_000),
        default=2000,
        help="entries per round: more coalesce into fewer writes",
    )
    project.add_argument("--burst", action="store_true", help="exit once nothing is left")
    add_option(
        project,
        "--claim-idle-ms",
        env="LEDGER_CLAIM_IDLE_MS",
        parse=cfg.integer(1, MAX_MS),
        default=30_000,
        help="take over entries of a projector silent this long",
    )
    _forget_idle_option(project, "a projector", "its group")
    add_option(
        project,
        "--trim-after-ms",
        env="LEDGER_TRIM_AFTER_MS",
        parse=cfg.integer(0, MAX_MS),
        default=0,
        help="trim stream entries every group has acknowledged and that are older "
        "than this (0: never trim)",
    )

    sched = sub.add_parser(
        "scheduler",
        help="move delayed tasks onto their streams when due, and fire recurring schedules",
    )
    _common(sched)
    metrics_process.add_options(sched)

    schedules = sub.add_parser("schedules", help="list, add or remove recurring schedules")
    _common(schedules)
    ssub = schedules.add_subparsers(dest="schedules_command", required=True)
    ssub.add_parser("list", help="every schedule as JSON, soonest first")
    sadd = ssub.add_parser(
        "add", help="create or replace a schedule (takes effect at its next tick)"
    )
    sadd.add_argument("name", help="1-64 of A-Z a-z 0-9 _ . -")
    sadd.add_argument(
        "--cron",
        required=True,
        help="5 fields (minute hour day month weekday), or 6 with seconds first",
    )
    sadd.add_argument("--queue", required=True, dest="queue_name", help="the task's queue")
    sadd.add_argument("--type", required=True, dest="task_type", help="the task's type")
    sadd.add_argument("--data", default="{}", help="the task's data, a JSON object")
    sadd.add_argument("--priority", type=int, default=None, help="1..4 (default: the queue's)")
    sadd.add_argument("--timezone", default="UTC", help="IANA name the cron reads in")
    srm = ssub.add_parser("remove", help="delete schedules (a tick already claimed still fires)")
    srm.add_argument("names", nargs="+", metavar="NAME")

    stats = sub.add_parser("stats", help="print queue statistics as JSON")
    _common(stats)
    stats.add_argument("queue", nargs="?", default=None)

    dlq = sub.add_parser("dlq", help="list or requeue dead letters")
    _common(dlq)
    dsub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlist = dsub.add_parser("list", help="newest dead letters first")
    dlist.add_argument("--limit", type=int, default=50)
    dreq = dsub.add_parser("requeue", help="put dead letters back on their streams")
    dreq.add_argument("ids", nargs="+", metavar="ID", help="dead-letter id, e.g. p3:1700-0")
    audit.add_parsers(sub, _common)
    serve.add_parsers(sub, _common)
    return parser


class _Extend(argparse.Action):
    """``--import a --import b,c`` -> (a, b, c): each value is already a tuple of names."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        before = getattr(namespace, self.dest, ())
        setattr(
            namespace, self.dest, (*(() if isinstance(before, cfg.FromEnv) else before), *values)
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        resolve(args)
    except EnvError as exc:  # one line, like argparse's own error, and the same exit code
        print(f"ledger: error: {exc}", file=sys.stderr)
        return RET_USAGE
    from ..jsonlog import configure

    configure(args.log_level)  # one JSON object per line
    from pymongo.errors import ConnectionFailure

    from streams.errors import ConfigError, Unavailable

    try:
        if args.command == "serve":
            return serve.run(args, _settings(args))
        if args.command in audit.COMMANDS:
            return audit.run(args, _settings(args))
        if args.command == "demo":
            from ..dev.demo import run_demo

            return run_demo(args, _settings(args))
        if args.command == "worker":
            return _worker(args, _settings(args))
        if args.command == "project":
            return _project(args, _settings(args))
        if args.command == "scheduler":
            return _scheduler(args, _settings(args))
        if args.command == "stats":
            return _stats(args, _settings(args))
        if args.command == "schedules":
            return _schedules(args, _settings(args))
        return _dlq(args, _settings(args))
    except EnvError as exc:
        print(f"ledger: error: {exc}", file=sys.stderr)
        return RET_USAGE
    except ConfigError as exc:
        print(f"ledger: {exc}", file=sys.stderr)
        return RET_USAGE
    except Unavailable as exc:
        print(f"ledger: {exc}", file=sys.stderr)
        return RET_CONNECT
    except ConnectionFailure as exc:
        print(f"ledger: MongoDB is unavailable: {exc}", file=sys.stderr)
        return RET_CONNECT


def _pick(
    wanted: Sequence[str], known: list[str], prog: str, option: str, what: str
) -> set[str] | None:
    """The names of an option if all are known; None (after saying why) if not.

    ``option`` is its flag, or the variable it came from.
    """
    unknown = set(wanted) - set(known)
    if unknown:
        print(
            f"{prog}: error: {option}: unknown {what}(s): {', '.join(sorted(unknown))} "
            f"(known: {', '.join(known)})",
            file=sys.stderr,
        )
        return None
    return set(wanted)


def _on_term(stop: Any) -> None:
    """SIGTERM and SIGINT finish the current round, then exit."""

    def handler(signum: int, frame: object) -> None:
        log.info("signal %d: draining", signum)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def queue_manager(settings: Settings) -> Any:
    from streams import QueueManager

    db = None
    if settings.mongo_url:
        from ledger.tasks import allowed_collections
        from projections.store import MongoDBManager, connect

        client = connect(settings.mongo_url)
        db = MongoDBManager(
            client[settings.mongo_db], allowed_collections(settings.extra_collections)
        )
    return QueueManager(config=settings.streams(), db=db)


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    for name in args.imports:
        try:
            importlib.import_module(name)
        except Exception as exc:
            print(
                f"ledger worker: {source(args, 'imports', '--import')}: cannot import "
                f"{name!r}: {exc}",
                file=sys.stderr,
            )
            return RET_IMPORT
    from ledger.tasks import Priority
    from streams import RetryPolicy

    qm = queue_manager(settings)
    queues = qm.config.queues
    if args.queues:
        wanted = _pick(
            args.queues,
            [q.name for q in queues],
            "ledger worker",
            source(args, "queues", "--queues"),
            "queue",
        )
        if wanted is None:
            return RET_USAGE
        queues = tuple(q for q in queues if q.name in wanted)
    # Without --queues every level is served, CRITICAL included (no queue names it,
    # but events and tasks may be appended at CRITICAL priority).
    levels: tuple[Priority, ...] = tuple(
        sorted({q.priority for q in queues} if args.queues else set(Priority), reverse=True)
    )
    concurrency = args.concurrency or sum(q.workers for q in queues)
    overrides = dict(
        levels=levels,
        claim_idle_ms=args.claim_idle_ms,
        forget_idle_ms=args.forget_idle_ms,
        status_ttl_s=args.status_ttl_s,
        retry=RetryPolicy(
            max_attempts=args.max_attempts,
            base_ms=args.backoff_ms,
            max_ms=max(args.backoff_ms, 300_000),
        ),
        allowed_collections=qm.allowed,
    )
    # the consumer threads of start_workers (QueueManager keeps them in _workers)
    metrics_process.start(
        args, metrics_process.WorkerCollector(lambda: [w for w, _ in qm._workers])
    )
    if args.burst:
        worker = qm.worker(**overrides)
        handled = worker.run_until_idle(timeout=3600)
        print(f"handled {handled} deliveries, {worker.processed} succeeded")
        return RET_OK
    done = threading.Event()
    _on_term(done.set)
    qm.start_workers(concurrency, **overrides)
    log.info("worker up: %d consumers on %s", concurrency, ", ".join(lv.name for lv in levels))
    done.wait()
    qm.stop_workers()
    log.info("worker stopped cleanly")
    return RET_OK


def _project(args: argparse.Namespace, settings: Settings) -> int:
    from projections.runner import all_projections, group_of, projector
    from projections.store import connect as mongo
    from streams.connection import connect, ensure_partitions
    from streams.retention import trim

    if not settings.mongo_url:
        print("ledger project: MONGO_URL is not set", file=sys.stderr)
        return RET_USAGE
    chosen = all_projections()
    if args.only:
        wanted = _pick(
            args.only,
            [p.name for p in chosen],
            "ledger project",
            source(args, "only", "--only"),
            "projection",
        )
        if wanted is None:
            return RET_USAGE
        chosen = [p for p in chosen if p.name in wanted]
    client = connect(settings.streams().redis_url)
    ensure_partitions(client, settings.partitions)
    db = mongo(settings.mongo_url)[settings.mongo_db]
    workers = [
        projector(
            client,
            settings.partitions,
            db,
            p,
            batch=args.batch,
            claim_idle_ms=args.claim_idle_ms,
            forget_idle_ms=args.forget_idle_ms,
        )
        for p in chosen
    ]
    metrics_process.start(
        args,
        metrics_process.ProjectorCollector(
            [(p.name, w) for p, w in zip(chosen, workers, strict=True)]
        ),
    )
    if args.burst:
        for w in workers:
            w.run_until_idle(timeout=3600)
        print(f"projected {sum(w.processed for w in workers)} deliveries")
        return RET_OK
    done = threading.Event()
    _on_term(done.set)
    threads = [
        threading.Thread(target=w.run, name=f"projector-{p.name}", daemon=True)
        for w, p in zip(workers, chosen, strict=True)
    ]
    for t in threads:
        t.start()
    log.info("projectors up: %s", ", ".join(p.name for p in chosen))
    while not done.wait(5.0):
        if args.trim_after_ms > 0:
            try:
                removed = trim(
                    client,
                    settings.partitions,
                    keep_ms=args.trim_after_ms,
                    required=("workers", *(group_of(p) for p in all_projections())),
                )
            except Exception:  # trimming is housekeeping: never stop projecting for it
                log.exception("trimming failed; will try again")
                continue
            if removed:
                log.info("trimmed %d stream entries", removed)
    for w in workers:
        w.stop()
    for t in threads:
        t.join(30)
    log.info("projectors stopped cleanly")
    return RET_OK


def _scheduler(args: argparse.Namespace, settings: Settings) -> int:
    from streams import Scheduler
    from streams.connection import connect, ensure_partitions

    client = connect(settings.streams().redis_url)
    ensure_partitions(client, settings.partitions)
    scheduler = Scheduler(
        client,
        settings.partitions,
        task_ttl_s=settings.streams().idempotency_ttl_s,
        config=settings.streams(),
    )
    metrics_process.start(args, metrics_process.SchedulerCollector(scheduler))
    _on_term(scheduler.stop)
    log.info("scheduler up")
    scheduler.run()
    return RET_OK


def _stats(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from streams import QueueManager

    qm = QueueManager(config=settings.streams())
    print(json.dumps(qm.get_queue_stats(args.queue), indent=2))
    return RET_OK


def _schedules(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from ledger.errors import ValidationError
    from streams import QueueManager

    qm = QueueManager(config=settings.streams())
    if args.schedules_command == "list":
        print(json.dumps(qm.list_schedules(), indent=2))
        return RET_OK
    if args.schedules_command == "add":
        try:
            data = json.loads(args.data)
        except ValueError as exc:
            print(f"ledger schedules add: --data is not JSON: {exc}", file=sys.stderr)
            return RET_USAGE
        try:
            created = qm.add_schedule(
                args.name,
                args.cron,
                args.queue_name,
                args.task_type,
                data,
                args.priority,
                args.timezone,
            )
        except ValidationError as exc:
            print(f"ledger schedules add: {exc.field}: {exc}", file=sys.stderr)
            return RET_USAGE
        print(json.dumps({"created": created, **(qm.get_schedule(args.name) or {})}, indent=2))
        return RET_OK
    status = RET_OK
    for name in args.names:
        if qm.remove_schedule(name):
            print(f"removed {name}")
        else:
            print(f"ledger schedules remove: no schedule {name!r}", file=sys.stderr)
            status = RET_ERROR
    return status


def _dlq(args: argparse.Namespace, settings: Settings) -> int:
    from streams import QueueManager
    from streams.errors import UnknownDeadLetter

    qm = QueueManager(config=settings.streams())
    if args.dlq_command == "list":
        for d in qm.dead_letters(args.limit):
            what = (
                f"task {d.task_type} {d.task_id}"
                if d.kind == "task"
                else f"{d.kind} of {d.user_id}"
            )
            print(f"{d.id}\t{d.queue_name}\t{what}\tattempts={d.attempts}\t{d.error}")
        return RET_OK
    status = RET_OK
    for dead_id in args.ids:
        try:
            print(f"{dead_id} -> {qm.requeue(dead_id)}")
        except UnknownDeadLetter as exc:
            print(f"ledger dlq requeue: {exc}", file=sys.stderr)
            status = RET_ERROR
    return status
