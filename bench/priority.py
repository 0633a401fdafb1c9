"""CRITICAL latency while workers chew through a LOW backlog.

    python -m bench.priority [--backlog 100000] [--workers 2] [--rate 50] [--seconds 10]

Starts a private redis-server and ``--workers`` worker processes
(``ledger worker --import bench.peer_handlers``, no-op handler), then:

  idle      CRITICAL tasks at ``--rate``/s for ``--seconds`` with nothing else queued
  backlog   stop the workers, fill LOW with ``--backlog`` tasks (pipelined enqueue),
            start the workers again, and once they are up offer CRITICAL tasks
            at ``--rate``/s for ``--seconds`` while they drain LOW

Latencies come from each task's status record (``enqueued_at``, ``started_at``,
``finished_at``: Redis server time, ms): enqueue->start and enqueue->finish,
p50/p99/max. Target: CRITICAL p99 enqueue->finish < 50 ms under the backlog.
Writes bench/results/priority.json.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from api.dev.embedded import EmbeddedRedis
from bench.common import (
    facts,
    ledger,
    print_facts,
    spawn,
    stop,
    summary,
    task_times,
    wait_until,
    write,
)
from ledger.tasks import Priority
from streams import QueueManager, StreamsConfig, keys

PARTITIONS = 4
TARGET_P99_MS = 50


def start_workers(url: str, n: int, concurrency: int, log: Path) -> list[subprocess.Popen[bytes]]:
    procs = [
        spawn(
            ledger(
                "worker",
                "--redis-url",
                url,
                "--partitions",
                str(PARTITIONS),
                "--import",
                "bench.peer_handlers",
                "--concurrency",
                str(concurrency),
                "--log-level",
                "WARNING",
            ),
            log,
        )
        for _ in range(n)
    ]
    return procs


def warm(qm: QueueManager) -> None:
    """One CRITICAL task through the running workers."""
    t = qm.enqueue("high_priority", "noop", {}, priority=Priority.CRITICAL)
    if not wait_until(lambda: (qm.get_task_status(t) or {}).get("status") == "completed", 60):
        raise RuntimeError("workers did not come up")


def low_left(client: redis.Redis) -> int:
    """LOW entries not yet acknowledged by the workers (lag + pending)."""
    left = 0
    for p in keys.partitions(PARTITIONS):
        for g in client.xinfo_groups(keys.stream(p, Priority.LOW)):
            if g["name"] in (b"workers", "workers"):
                left += int(g.get("lag") or 0) + int(g.get("pending", 0))
    return left


def critical(qm: QueueManager, client: redis.Redis, rate: float, secs: float) -> dict[str, Any]:
    n = int(rate * secs)
    ids = []
    backlog_at_send = []
    t0 = time.time()
    low_before = low_left(client)
    for i in range(n):
        delay = t0 + i / rate - time.time()
        if delay > 0:
            time.sleep(delay)
        backlog_at_send.append(low_left(client))
        ids.append(qm.enqueue("high_priority", "noop", {"i": i}, priority=Priority.CRITICAL))
    low_at_end = low_left(client)
    wait_until(
        lambda: all(s == "completed" for *_, s in task_times(client, PARTITIONS, ids)), 60, 0.1
    )
    times = task_times(client, PARTITIONS, ids)
    # only the tasks sent while LOW still had work count as "under backlog"
    done = [
        (e, s, f)
        for (e, s, f, st), low in zip(times, backlog_at_send, strict=True)
        if st == "completed" and (low > 0 or low_before == 0)
    ]
    return {
        "rate_per_s": rate,
        "seconds": secs,
        "sent": n,
        "completed": len(done),
        "counted": len(done),
        "low_left_before": low_before,
        "low_left_after": low_at_end,
        "sent_while_low_backlogged": sum(1 for low in backlog_at_send if low > 0),
        "all_completed": all(st == "completed" for *_, st in times),
        "enqueue_to_start_ms": summary([s - e for e, s, _ in done]),
        "enqueue_to_finish_ms": summary([f - e for e, _, f in done]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--backlog", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2, help="worker processes")
    ap.add_argument("--concurrency", type=int, default=4, help="consumers per worker process")
    ap.add_argument("--rate", type=float, default=50.0, help="CRITICAL tasks per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp_s, EmbeddedRedis(Path(tmp_s) / "redis") as rs:
        tmp = Path(tmp_s)
        f = facts(rs.url)
        print_facts(f)
        client = redis.Redis.from_url(rs.url)
        qm = QueueManager(config=StreamsConfig(redis_url=rs.url, partitions=PARTITIONS))
        log = tmp / "workers.log"
        procs = start_workers(rs.url, args.workers, args.concurrency, log)
        try:
            warm(qm)
            idle = critical(qm, client, args.rate, args.seconds)
        finally:
            stop(procs)
        t0 = time.perf_counter()
        for i in range(0, args.backlog, 500):
            qm.enqueue_many(
                "low_priority",
                "noop",
                [{"i": j} for j in range(i, min(i + 500, args.backlog))],
                Priority.LOW,
            )
        fill_s = time.perf_counter() - t0
        print(
            f"filled LOW with {args.backlog:,} tasks in {fill_s:.1f} s "
            f"({args.backlog / fill_s:,.0f}/s pipelined)",
            flush=True,
        )
        procs = start_workers(rs.url, args.workers, args.concurrency, log)
        try:
            warm(qm)
            loaded = critical(qm, client, args.rate, args.seconds)
        finally:
            stop(procs)
        qm.close()
        client.close()

    print(
        f"\nCRITICAL at {args.rate:g}/s for {args.seconds:g} s, {args.workers} worker "
        f"processes x {args.concurrency} consumers (ms, Redis server time)"
    )
    print(f"{'case':<44}{'n':>5}{'p50':>6}{'p99':>6}{'max':>6}   LOW left before -> after")
    for name, r in (("idle", idle), (f"{args.backlog:,} LOW backlog", loaded)):
        for what in ("enqueue_to_start_ms", "enqueue_to_finish_ms"):
            s = r[what]
            print(
                f"{name + ', ' + what[:-3].replace('_', ' '):<44}{s['n']:>5}{s['p50']:>6}"
                f"{s['p99']:>6}{s['max']:>6}   {r['low_left_before']:,} -> "
                f"{r['low_left_after']:,}"
            )
    p99 = loaded["enqueue_to_finish_ms"]["p99"]
    met = p99 is not None and p99 < TARGET_P99_MS and loaded["all_completed"]
    print(
        f"target CRITICAL p99 enqueue->finish < {TARGET_P99_MS} ms under backlog: "
        f"{p99} ms, {'met' if met else 'MISSED'} ({loaded['counted']} of {loaded['sent']} "
        f"sent while LOW had work; all completed: {loaded['all_completed']})"
    )
    write(
        "priority",
        {
            "facts": f,
            "args": vars(args),
            "fill_s": round(fill_s, 2),
            "idle": idle,
            "backlog": loaded,
            "target_p99_ms": TARGET_P99_MS,
            "met": met,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
