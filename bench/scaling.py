"""Drain rate of no-op tasks with 1, 2 and 4 worker processes.

    python -m bench.scaling [--tasks 20000] [--procs 1,2,4] [--concurrency 4] [--handler noop|hincr]

For each process count: a fresh private redis-server, ``--tasks`` tasks
enqueued pipelined (NORMAL), then ``--procs`` worker processes
(``ledger worker --import bench.peer_handlers``); tasks/s from the first
completed task until every task is acknowledged (the ``workers`` group idle).
Raw pipelined XADD+XREADGROUP+XACK of the same count is the floor.
Writes bench/results/scaling.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from api.dev.embedded import EmbeddedRedis
from bench.common import (
    cpu_ms,
    facts,
    groups_idle,
    ledger,
    print_facts,
    spawn,
    stop,
    write,
)
from ledger.tasks import Priority
from streams import QueueManager, StreamsConfig, keys

PARTITIONS = 4


def processed(client: redis.Redis) -> int:
    """Tasks the workers completed so far (the queues' ``processed`` counters, which a
    worker writes once per ``stats_every_ms``: they lag by up to a second)."""
    total = 0
    for p in keys.partitions(PARTITIONS):
        stats: dict[bytes, bytes] = client.hgetall(keys.stats(p))  # type: ignore[assignment]
        total += sum(int(v) for k, v in stats.items() if k.startswith(b"processed:"))
    return total


def raw_floor(client: redis.Redis, n: int) -> float:
    """Pipelined XADD, then XREADGROUP 100 at a time + XACK: the bare stream round trip."""
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd("bench:raw", {"i": i})
    pipe.execute()
    client.xgroup_create("bench:raw", "g", id="0")
    t0 = time.perf_counter()
    done = 0
    while done < n:
        reply: Any = client.xreadgroup("g", "c", {"bench:raw": ">"}, count=100)
        ids = [eid for _, entries in reply for eid, _ in entries]
        client.xack("bench:raw", "g", *ids)
        done += len(ids)
    return n / (time.perf_counter() - t0)


def run(n_procs: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    with EmbeddedRedis(tmp / f"redis-{n_procs}") as rs:
        client = redis.Redis.from_url(rs.url)
        qm = QueueManager(config=StreamsConfig(redis_url=rs.url, partitions=PARTITIONS))
        data = [{"user": f"u{i % 1000}", "amount": 1} for i in range(args.tasks)]
        for i in range(0, len(data), 500):
            qm.enqueue_many("default", args.handler, data[i : i + 500], Priority.NORMAL)
        env = {"BENCH_REDIS_URL": rs.url}
        procs = [
            spawn(
                ledger(
                    "worker",
                    "--redis-url",
                    rs.url,
                    "--partitions",
                    str(PARTITIONS),
                    "--import",
                    "bench.peer_handlers",
                    "--concurrency",
                    str(args.concurrency),
                    "--log-level",
                    "WARNING",
                ),
                tmp / "workers.log",
                env,
            )
            for _ in range(n_procs)
        ]
        try:
            while processed(client) == 0:
                time.sleep(0.005)
            t0, first = time.perf_counter(), processed(client)
            c0 = cpu_ms([p.pid for p in procs])
            # the end: every task acknowledged (the counters are written once a second)
            while not groups_idle(client, PARTITIONS):
                time.sleep(0.01)
            secs = time.perf_counter() - t0
            cpu = cpu_ms([p.pid for p in procs]) - c0
        finally:
            stop(procs)
        counted = args.tasks - first
        qm.close()
        client.close()
        return {
            "processes": n_procs,
            "tasks": args.tasks,
            "timed": counted,
            "seconds": round(secs, 3),
            "tasks_per_s": round(counted / secs),
            "worker_cpu_ms_per_task": round(cpu / counted, 3),
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--procs", default="1,2,4")
    ap.add_argument("--concurrency", type=int, default=4, help="consumers per process")
    ap.add_argument("--handler", default="noop", choices=["noop", "hincr"])
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        with EmbeddedRedis(tmp / "raw") as rs:
            f = facts(rs.url)
            print_facts(f)
            floor = raw_floor(redis.Redis.from_url(rs.url), args.tasks)
        print(f"raw XREADGROUP x100 + XACK: {floor:,.0f} entries/s", flush=True)
        rows = []
        for n in (int(x) for x in args.procs.split(",")):
            rows.append(run(n, args, tmp))
            r = rows[-1]
            print(
                f"{n} worker process(es): {r['tasks_per_s']:,} tasks/s "
                f"({r['worker_cpu_ms_per_task']} worker CPU ms/task)",
                flush=True,
            )
    base = rows[0]["tasks_per_s"]
    print(f"\n{args.tasks:,} {args.handler} tasks, --concurrency {args.concurrency} per process")
    print(f"{'processes':>9}{'tasks/s':>10}{'vs 1':>7}{'vs raw':>8}{'CPU ms/task':>13}")
    for r in rows:
        r["speedup"] = round(r["tasks_per_s"] / base, 2)
        r["vs_raw"] = round(r["tasks_per_s"] / floor, 3)
        print(
            f"{r['processes']:>9}{r['tasks_per_s']:>10,}{r['speedup']:>7.2f}"
            f"{r['vs_raw']:>8.0%}{r['worker_cpu_ms_per_task']:>13}"
        )
    write(
        "scaling", {"facts": f, "args": vars(args), "raw_floor_per_s": round(floor), "rows": rows}
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
