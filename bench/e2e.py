"""End to end: append -> workers (`ledger worker`) -> read models (`ledger project`).

    python -m bench.e2e [--events 5000] [--tasks 1000] [--workers 2] [--rate 50] [--seconds 10]

Starts private redis-server and Mongo-wire servers, ``--workers`` worker
processes (``python -m api worker --import bench.peer_handlers``, with MongoDB:
ledger events go to the built-in handler that records each in its original
collection) and one ``python -m api project`` (balances, credit_scores, events).

  burst    ``--events`` credit events (append_batch x200, over ``--users``
           accounts) and ``--tasks`` no-op tasks (pipelined enqueue), as fast as
           the client goes; drain rate = entries / seconds from the first append
           until every group (workers, proj:*) has nothing undelivered or pending
  steady   ``--rate`` events/s and ``--rate``/2 tasks/s for ``--seconds``:
           append -> handler done (tasks: status enqueued_at -> finished_at, Redis
           time) and append -> projected (events: wall clock at the append call ->
           first poll, every 10 ms, that sees the account's balance at that
           version in MongoDB; so up to ~10 ms coarse), p50/p99/max

Writes bench/results/e2e.json.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from api.dev.embedded import EmbeddedMongo, EmbeddedRedis
from api.dev.loadgen import credit_traffic, registrations, user_ids
from bench.common import (
    facts,
    groups_idle,
    ledger,
    print_facts,
    spawn,
    stop,
    summary,
    task_times,
    wait_until,
    write,
)
from ledger.commands import Purchase
from ledger.errors import LedgerError
from ledger.tasks import Priority
from projections.store import connect
from streams import QueueManager, StreamsConfig

PARTITIONS = 4


def start(rurl: str, murl: str, workers: int, log: Path) -> list[subprocess.Popen[bytes]]:
    common = [
        "--redis-url",
        rurl,
        "--mongo-url",
        murl,
        "--partitions",
        str(PARTITIONS),
        "--log-level",
        "WARNING",
    ]
    procs = [
        spawn(
            ledger("worker", *common, "--import", "bench.peer_handlers", "--concurrency", "4"), log
        )
        for _ in range(workers)
    ]
    procs.append(spawn(ledger("project", *common), log))
    return procs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--workers", type=int, default=2, help="worker processes")
    ap.add_argument("--rate", type=float, default=50.0, help="steady events/s")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args(argv)

    with (
        tempfile.TemporaryDirectory() as tmp_s,
        EmbeddedRedis(Path(tmp_s) / "r") as rs,
        EmbeddedMongo(Path(tmp_s) / "m") as ms,
    ):
        tmp = Path(tmp_s)
        f = facts(rs.url)
        print_facts(f)
        client = redis.Redis.from_url(rs.url)
        qm = QueueManager(config=StreamsConfig(redis_url=rs.url, partitions=PARTITIONS))
        db = connect(ms.url)["ledger"]
        users = user_ids(args.users, prefix="e2e")
        qm.append_batch([(c, Priority.NORMAL, None) for c in registrations(users)])
        procs = start(rs.url, ms.url, args.workers, tmp / "procs.log")
        try:
            if not wait_until(
                lambda: (
                    groups_idle(client, PARTITIONS)
                    and db.balances.count_documents({}) >= args.users
                ),
                120,
                0.1,
            ):
                raise RuntimeError(f"pipeline did not come up (see {tmp}/procs.log)")

            # -- burst -------------------------------------------------------------
            cmds = list(credit_traffic(users, args.events, seed=5))
            t0 = time.perf_counter()
            accepted = 0
            for i in range(0, len(cmds), 200):
                res = qm.append_batch([(c, Priority.NORMAL, None) for c in cmds[i : i + 200]])
                accepted += sum(
                    1 for r in res if not isinstance(r, LedgerError) and not r.duplicate
                )
            for i in range(0, args.tasks, 500):
                qm.enqueue_many(
                    "default",
                    "noop",
                    [{"i": j} for j in range(i, min(i + 500, args.tasks))],
                    Priority.NORMAL,
                )
            t_appended = time.perf_counter() - t0
            wait_until(lambda: groups_idle(client, PARTITIONS), 600, 0.05)
            drain_s = time.perf_counter() - t0
            entries = accepted + args.tasks
            burst = {
                "events_offered": args.events,
                "events_accepted": accepted,
                "tasks": args.tasks,
                "append_s": round(t_appended, 3),
                "drain_s": round(drain_s, 3),
                "entries_per_s": round(entries / drain_s),
            }
            print(
                f"burst: {accepted} events accepted (of {args.events}) + {args.tasks} tasks "
                f"appended in {t_appended:.2f} s, all groups idle after {drain_s:.2f} s: "
                f"{entries / drain_s:,.0f} entries/s",
                flush=True,
            )

            # -- steady ------------------------------------------------------------
            rng = random.Random(9)
            n = int(args.rate * args.seconds)
            waiting: dict[str, list[tuple[int, float]]] = {}  # user -> [(version, sent ms)]
            proj_lat: list[float] = []
            task_ids: list[str] = []
            t0s = time.time()
            next_poll = 0.0

            def poll() -> None:
                if not waiting:
                    return
                now = time.time() * 1000
                for doc in db.balances.find({"_id": {"$in": list(waiting)}}, {"version": 1}):
                    left = [(v, s) for v, s in waiting[doc["_id"]] if v > doc["version"]]
                    proj_lat.extend(now - s for v, s in waiting[doc["_id"]] if v <= doc["version"])
                    if left:
                        waiting[doc["_id"]] = left
                    else:
                        del waiting[doc["_id"]]

            for i in range(n):
                while (delay := t0s + i / args.rate - time.time()) > 0:
                    if time.time() >= next_poll:
                        poll()
                        next_poll = time.time() + 0.01
                    time.sleep(min(delay, 0.005))
                user = rng.choice(users)
                sent = time.time() * 1000
                a = qm.append(
                    Purchase(user_id=user, amount=10, currency="USD", transaction_id=f"steady-{i}")
                )
                waiting.setdefault(user, []).append((a.version, sent))
                if i % 2 == 0:
                    task_ids.append(qm.enqueue("default", "noop", {"i": i}))
            deadline = time.time() + 60
            while waiting and time.time() < deadline:
                poll()
                time.sleep(0.01)
            wait_until(lambda: groups_idle(client, PARTITIONS), 60, 0.05)
            times = task_times(client, PARTITIONS, task_ids)
            handler_lat = [float(fin - enq) for enq, _, fin, st in times if st == "completed"]
            steady = {
                "events": n,
                "tasks": len(task_ids),
                "rate_per_s": args.rate,
                "append_to_handler_done_ms": summary(handler_lat),
                "append_to_projected_ms": summary([round(x, 1) for x in proj_lat]),
                "events_never_projected": sum(len(v) for v in waiting.values()),
            }
        finally:
            stop(procs)
        qm.close()
        client.close()

    print(
        f"\nsteady: {args.rate:g} events/s + {args.rate / 2:g} tasks/s for {args.seconds:g} s, "
        f"{args.workers} worker processes + 1 projector (ms)"
    )
    print(f"{'latency':<30}{'n':>6}{'p50':>8}{'p99':>8}{'max':>8}")
    for label, key in (
        ("append -> handler done (tasks)", "append_to_handler_done_ms"),
        ("append -> projected (events)", "append_to_projected_ms"),
    ):
        s = steady[key]
        print(f"{label:<30}{s['n']:>6}{s['p50']:>8}{s['p99']:>8}{s['max']:>8}")
    print(
        f"burst drain: {burst['entries_per_s']:,} entries/s "
        f"({burst['events_accepted']} events + {burst['tasks']} tasks)"
    )
    write("e2e", {"facts": f, "args": vars(args), "burst": burst, "steady": steady})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
