"""``ledger demo``: the whole system on embedded defaults, under a synthetic load.

Starts a private redis-server (AOF, appendfsync always) and Mongo-wire server
unless REDIS_URL / MONGO_URL are given, and as real child processes the HTTP
API, worker processes, the projectors and the scheduler. It pushes synthetic
credit traffic and original-style tasks through them, waits for everything to
drain, then proves the result with the audit (every account re-folded from the
log equals its Redis state and its read models) and checks that every event
reached the original collections exactly once. Then, unless ``--once``, traffic
keeps flowing through the HTTP API until Ctrl-C, for the dashboard to show.

Ctrl-C, SIGTERM (``timeout``, ``kill``, make passing one on) and SIGHUP (a
closed terminal) all stop it the same orderly way: the processes, then the
servers, then the data directory. Every child gets a parent-death signal
(``api.procs``), so even a SIGKILLed demo leaves nothing running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ..cli.exits import RET_MISMATCH, RET_OK
from ..settings import WAIT_REPLICAS, Settings
from .deployment import Deployment

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _say(text: str) -> None:
    with contextlib.suppress(OSError):  # the terminal has gone (SIGHUP): shut down silently
        print(text, flush=True)


class Stopped(KeyboardInterrupt):
    """A stop signal arrived; a KeyboardInterrupt so that no ``except Exception`` eats it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _StopSignals:
    """Turns Ctrl-C, SIGTERM and SIGHUP into ``Stopped``, once: after the first, all
    three are ignored so that a second one cannot cut the drain short.

    Signals ignored when the demo started (``nohup``, ``&`` in a script) stay
    ignored. Handlers can only be set from the main thread; elsewhere this does
    nothing. The previous handlers come back on exit.
    """

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                previous = signal.getsignal(signum)
                if previous is None or previous is signal.SIG_IGN:
                    continue
                self._previous[signum] = previous
                signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.ignore()
        raise Stopped(signum)

    def ignore(self) -> None:
        for signum in self._previous:
            signal.signal(signum, signal.SIG_IGN)

    def __exit__(self, *exc: object) -> None:
        while self._previous:
            signum, previous = self._previous.popitem()
            signal.signal(signum, previous)


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Run the demo. A stop signal shuts it down in order: exit 0 once the proof
    is done, else 128 + the signal's number (what a shell reports for it)."""
    proved = False
    try:
        with _StopSignals() as signals, ExitStack() as stack:
            try:
                settings, base_url, procs = _start(stack, settings, args.workers, args.keep)
                code = _drive(settings, args, procs)
                if code != RET_OK or args.once:
                    return code
                proved = True
                return _keep_traffic_flowing(base_url, args.users, procs)
            except Stopped as stop:
                _say(f"\n{stop}: stopping the processes, then the servers")
                return RET_OK if proved else 128 + stop.signum
            finally:
                signals.ignore()  # nothing may cut short the drain the ExitStack does now
    except Stopped as stop:  # came between the end of the work and ``ignore()``
        return RET_OK if proved else 128 + stop.signum


def _start(
    stack: ExitStack, settings: Settings, workers: int, keep: bool
) -> tuple[Settings, str, list[subprocess.Popen[bytes]]]:
    """The servers (unless given) and the processes, each stopped by ``stack``."""
    from .embedded import EmbeddedMongo, EmbeddedRedis, free_port

    data_dir = Path(tempfile.mkdtemp(prefix="ledger-demo-"))
    if not keep:
        stack.callback(shutil.rmtree, data_dir, True)
    redis_url, mongo_url = settings.redis_url, settings.mongo_url
    if redis_url is None:
        redis = stack.enter_context(EmbeddedRedis(data_dir / "redis", appendfsync="always"))
        redis_url = redis.url
        _say(f"redis-server (AOF, appendfsync always) on {redis_url}")
    if mongo_url is None:
        mongo = stack.enter_context(EmbeddedMongo(data_dir / "mongo"))
        mongo_url = mongo.url
        _say(f"Mongo-wire server on {mongo_url}")
    settings = Settings(
        redis_url=redis_url,
        mongo_url=mongo_url,
        mongo_db=settings.mongo_db,
        partitions=settings.partitions,
        extra_collections=settings.extra_collections,
    )
    port = free_port()
    procs = _start_processes(stack, settings, workers, port)
    base_url = f"http://127.0.0.1:{port}"
    _wait_for_api(base_url, procs)
    _say(f"\nAPI and dashboard: {base_url}/dashboard   (OpenAPI: {base_url}/openapi.json)")
    _say(
        "try:\n"
        f"  curl -s {base_url}/api/accounts/user-00001/balance\n"
        f"  curl -s -X POST {base_url}/api/accounts/user-00001/purchases "
        "-H 'Content-Type: application/json' -H 'Idempotency-Key: demo-1' "
        '-d \'{"amount": 500, "currency": "USD", "transaction_id": "demo-1"}\'\n'
        f"  curl -s {base_url}/api/queue/stats\n"
    )
    return settings, base_url, procs


def _start_processes(
    stack: ExitStack, settings: Settings, workers: int, port: int
) -> list[subprocess.Popen[bytes]]:
    deployment = Deployment(
        settings.redis_url or "",
        settings.mongo_url or "",
        mongo_db=settings.mongo_db,
        partitions=settings.partitions,
        log_level="WARNING",
        # the demo never waits for replicas (its embedded Redis has none): an exported
        # LEDGER_WAIT_REPLICAS must not turn every append of its API into a 503
        env={WAIT_REPLICAS: "0"},
    )
    stack.callback(deployment.stop)  # before the first start: a signal may come in between
    # Same process group as the demo (a terminal's Ctrl-C reaches them too), and
    # a parent-death signal: a SIGKILLed demo takes them along.
    for i in range(workers):
        deployment.start(
            f"worker-{i}",
            "worker",
            "--import",
            "api.dev.demo_handlers",
            "--concurrency",
            "2",
            "--backoff-ms",
            "200",
            "--max-attempts",
            "3",
        )
    deployment.start("scheduler", "scheduler")
    deployment.start("projector", "project", "--trim-after-ms", "60000")
    deployment.start("api", "serve", "--host", "127.0.0.1", "--port", str(port))
    procs = list(deployment.procs.values())
    _say(
        f"started the API, {workers} worker processes, the projectors and a scheduler "
        f"(pids {', '.join(str(p.pid) for p in procs)})"
    )
    return procs


def _drive(
    settings: Settings, args: argparse.Namespace, procs: list[subprocess.Popen[bytes]]
) -> int:
    from ledger.commands import Hold
    from ledger.errors import LedgerError
    from ledger.tasks import Priority
    from streams import QueueManager

    from .loadgen import OpenHolds, credit_traffic, hold_traffic, registrations, user_ids

    qm = QueueManager(config=settings.streams())
    users = user_ids(args.users)
    t0 = time.perf_counter()
    for cmd in registrations(users):
        qm.append(cmd)
    t_reg = time.perf_counter() - t0
    _say(f"registered {len(users)} users one by one: {len(users) / t_reg:,.0f} appends/s")

    traffic = list(credit_traffic(users, args.events))
    half = len(traffic) // 2
    outcome: dict[str, int] = {"accepted": 0, "duplicate": 0, "refused": 0}

    def count(result: Any) -> None:
        if isinstance(result, LedgerError):
            outcome["refused"] += 1
        elif result.duplicate:
            outcome["duplicate"] += 1
        else:
            outcome["accepted"] += 1

    t0 = time.perf_counter()
    for cmd in traffic[:half]:
        try:
            count(qm.append(cmd, priority=Priority.HIGH))
        except LedgerError as exc:
            count(exc)
    t_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    rest = traffic[half:]
    for i in range(0, len(rest), 200):
        for result in qm.append_batch([(c, Priority.NORMAL, None) for c in rest[i : i + 200]]):
            count(result)
    t_batch = time.perf_counter() - t0
    _say(
        f"credit events: {half} single appends at {half / t_single:,.0f}/s, "
        f"{len(rest)} batched (200 per round trip) at {len(rest) / t_batch:,.0f}/s"
    )
    _say(
        f"  accepted {outcome['accepted']}, duplicates recognised {outcome['duplicate']}, "
        f"refused (would overdraw) {outcome['refused']}"
    )

    # credit holds: reserve an estimate, then capture a random part or release it
    open_holds = OpenHolds()
    made = settled = 0
    for round_no in range(5):
        cmds = list(hold_traffic(users, 100, open_holds, seed=500 + round_no))
        results = qm.append_batch([(c, Priority.NORMAL, None) for c in cmds])
        for cmd, result in zip(cmds, results, strict=True):
            if isinstance(result, LedgerError) or result.duplicate:
                continue
            if isinstance(cmd, Hold):
                open_holds.add(cmd.user_id, result.hold_id, cmd.amount)
                made += 1
            else:
                settled += 1
    _say(
        f"credit holds: {made} made, {settled} captured in part or released, "
        f"{len(open_holds.holds)} left open (the scheduler releases them at their expiry)"
    )

    tasks = [qm.enqueue("high_priority", "credit_calculation", {"user_id": u}) for u in users[:20]]
    tasks += [
        qm.enqueue(
            "default",
            "analytics_event",
            {
                "operation": "insert",
                "collection": "analytics",
                "data": {"event": "demo_started", "n": i},
            },
        )
        for i in range(10)
    ]
    tasks += [
        qm.enqueue(
            "low_priority",
            "send_notification",
            {"to": f"{u}@example.com", "text": "welcome"},
            delay=1.0,
        )
        for u in users[:5]
    ]
    bounce = qm.enqueue(
        "default", "send_notification", {"to": "nobody@example.invalid", "text": "bounce"}
    )
    tasks.append(bounce)
    _say(f"enqueued {len(tasks)} original-style tasks (5 delayed by 1 s, 1 that must fail)")
    # workflows: a chain, a task that waits for the failing one (cancelled with it), and
    # a recurring schedule the scheduler fires every 10 s (the dashboard lists them)
    report = {"event": "report_ready", "user_id": users[0]}
    chain = qm.chain(
        [
            {
                "queue_name": "high_priority",
                "task_type": "credit_calculation",
                "task_data": {"user_id": users[0]},
            },
            {
                "queue_name": "default",
                "task_type": "analytics_event",
                "task_data": {"operation": "insert", "collection": "analytics", "data": report},
            },
            {
                "queue_name": "low_priority",
                "task_type": "send_notification",
                "task_data": {"to": f"{users[0]}@example.com", "text": "your report is ready"},
            },
        ]
    )
    retry_later = qm.enqueue(
        "default",
        "send_notification",
        {"to": "nobody@example.invalid", "text": "reminder"},
        depends_on=[bounce],
    )
    tasks += [*chain, retry_later]
    qm.add_schedule(
        "demo-heartbeat",
        "*/10 * * * * *",
        "default",
        "analytics_event",
        {"operation": "insert", "collection": "analytics", "data": {"event": "heartbeat"}},
    )
    _say(
        "workflows: a chain of 3 tasks, 1 task waiting for the one that must fail (it is "
        "cancelled with it), and the schedule demo-heartbeat (every 10 s)"
    )

    _wait_drained(qm, procs, timeout=120)
    return _report(qm, settings, tasks, outcome)


def _wait_drained(qm: Any, procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise SystemExit("a demo process exited early; see its output above")
        if _backlog(qm) == 0:
            return
        time.sleep(0.2)
    raise SystemExit("the queues did not drain in time")


def _backlog(qm: Any) -> int:
    """Entries some group (workers or projectors) has not finished, plus delayed tasks."""
    from streams import keys
    from streams.groups import groups
    from streams.scheduler import Scheduler

    total = Scheduler(qm.redis, qm.config.partitions).pending()
    soon = int(time.time() * 1000) + 10_000  # holds the scheduler is about to release
    for p in keys.partitions(qm.config.partitions):
        total += int(qm.redis.zcount(keys.holds_due(p), "-inf", soon))
        for level in keys.LEVELS_DESC:
            for g in groups(qm.redis, keys.stream(p, level)).values():
                total += g.pending + (g.lag or 0)
    return total


def _report(qm: Any, settings: Settings, tasks: list[str], outcome: dict[str, int]) -> int:
    from projections.audit import audit
    from projections.store import connect

    _say("\nqueue       processed failed retried dead  p50ms p99ms")
    for name, s in qm.get_queue_stats().items():
        lat = s["latency_ms"]
        _say(
            f"{name:<12}{s['processed']:>9}{s['failed']:>7}{s['retried']:>8}{s['dead']:>5}"
            f"{lat['p50'] or 0:>7}{lat['p99'] or 0:>6}"
        )
    statuses: dict[str, int] = {}
    for t in tasks:
        st = (qm.get_task_status(t) or {}).get("status", "unknown")
        statuses[st] = statuses.get(st, 0) + 1
    _say(f"task statuses: {statuses}")
    for d in qm.dead_letters(5):
        _say(f"dead letter {d.id}: {d.task_type or d.kind} after {d.attempts} attempts: {d.error}")

    db = connect(settings.mongo_url or "")[settings.mongo_db]
    report = audit(qm.redis, qm.config.partitions, db)
    _say(f"audit: {report.summary()}")
    for m in report.mismatches[:10]:
        _say(f"  {m}")
    recorded = sum(
        db[c].count_documents({})
        for c in ("users", "credit_purchases", "credit_usage", "credit_updates", "credit_holds")
    )
    _say(
        f"original collections hold {recorded} event records for {report.events} events "
        f"(each exactly once)"
    )
    ok = report.ok and not report.lagging and recorded == report.events
    _say("\ndemo OK" if ok else "\ndemo FOUND MISMATCHES")
    return RET_OK if ok else RET_MISMATCH


def _wait_for_api(base_url: str, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise SystemExit("a demo process exited early; see its output above")
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the API did not come up in 30 s")


def _post(url: str, body: Any) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"{}")


def _keep_traffic_flowing(base_url: str, users: int, procs: list[subprocess.Popen[bytes]]) -> int:
    """Credit traffic through the HTTP API until a stop signal (the dashboard moves)."""
    from .loadgen import OpenHolds, as_batch_item, credit_traffic, hold_traffic, user_ids

    names = user_ids(users)
    open_holds = OpenHolds()
    sent = accepted = 0
    _say(f"traffic keeps flowing through {base_url}/api/events:batch; press Ctrl-C to stop")
    round_no = -1
    while True:
        round_no += 1
        if any(p.poll() is not None for p in procs):
            raise SystemExit("a demo process exited; see its output above")
        items = [as_batch_item(c) for c in credit_traffic(names, 20, seed=1000 + round_no)]
        items += [
            as_batch_item(c) for c in hold_traffic(names, 6, open_holds, seed=5000 + round_no)
        ]
        result = _post(f"{base_url}/api/events:batch", {"events": items})
        sent += len(items)
        accepted += int(result.get("accepted", 0))
        for item, outcome in zip(items, result.get("results") or [], strict=False):
            amount = item.get("amount")
            if item["kind"] == "hold" and outcome.get("status") == 201:
                assert isinstance(amount, int)
                open_holds.add(str(item["user_id"]), outcome.get("hold_id", ""), amount)
        if round_no % 10 == 0:
            _post(
                f"{base_url}/api/queue/enqueue",
                {
                    "queue_name": "low_priority",
                    "task_type": "credit_calculation",
                    "task_data": {"user_id": names[round_no % len(names)]},
                    "priority": 1,
                    "delay": 0,
                },
            )
        if round_no % 20 == 0:
            _say(f"  sent {sent} events over HTTP, {accepted} accepted")
        time.sleep(0.5)
