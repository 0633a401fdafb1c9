"""The same task through this project and through Dramatiq (Redis broker), same run.

    python -m bench.peers [--tasks 20000] [--processes 2] [--threads 8] [--latency-s 10]

Workload: a task whose handler does one HINCRBY of ``amount`` into a per-user
hash (``bench.peer_handlers`` / ``bench.peer_dramatiq``), on one private
redis-server (ledger on DB 0, Dramatiq's broker on DB 1, sums in DB 0 under
separate keys). For each system, in turn:

  enqueue   ``--tasks`` tasks one by one from this process (qm.enqueue / actor.send);
            the ledger runs twice, the second time enqueueing with
            ``qm.enqueue_many`` (``--many`` tasks per round trip; Dramatiq's Redis
            broker has no batch send)
  drain     start ``--processes`` worker processes; tasks/s from the first
            completed task until the hash sums reach what was enqueued
  CPU       ms per task: producer (this process, while enqueueing) + redis-server
            (enqueue and drain) + workers (the drain, children included), from
            /proc/<pid>/stat utime+stime
  latency   restart the workers, offer a fixed load (default half the slower
            drain rate) for ``--latency-s`` seconds; enqueue->done p50/p99/max
            (the handler records its done time in the same round trip as HINCRBY)

Totals are checked: every user's sum equals what was enqueued for it.
Raw HINCRBY one by one from this process is printed as the floor.
Writes bench/results/peers.json.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from api.dev.embedded import EmbeddedRedis
from bench.common import (
    cpu_ms,
    facts,
    ledger,
    print_facts,
    spawn,
    stop,
    summary,
    wait_until,
    write,
)
from ledger.tasks import Priority
from streams import QueueManager, StreamsConfig

PARTITIONS = 4
SUMS = {
    "ledger": "bench:sum:ledger",
    "ledger_many": "bench:sum:ledger-many",
    "dramatiq": "bench:sum:dramatiq",
}
LABELS = {"ledger": "ledger", "ledger_many": "ledger, enqueue_many", "dramatiq": "dramatiq"}


def total(client: redis.Redis, key: str) -> int:
    return sum(int(v) for v in client.hvals(key))


def hash_ints(client: redis.Redis, key: str) -> dict[str, int]:
    return {
        (k.decode() if isinstance(k, bytes) else k): int(v) for k, v in client.hgetall(key).items()
    }


class System:
    """How to enqueue to, and run workers of, one of the two systems."""

    def __init__(
        self, name: str, url: str, broker_url: str, args: argparse.Namespace, tmp: Path
    ) -> None:
        self.name, self.url, self.args, self.tmp = name, url, args, tmp
        self.key = SUMS[name]
        self.env = {
            "BENCH_REDIS_URL": url,
            "BENCH_SUM_KEY": self.key,
            "BENCH_DRAMATIQ_URL": broker_url,
        }
        self.send: Callable[[str, int, str | None], Any]
        self.send_many: Callable[[list[tuple[str, int]]], Any] | None = None
        self.is_ledger = name.startswith("ledger")
        if self.is_ledger:
            qm = QueueManager(config=StreamsConfig(redis_url=url, partitions=PARTITIONS))
            self.send = lambda u, a, tag: qm.enqueue(
                "default",
                "hincr",
                {"user": u, "amount": a} if tag is None else {"user": u, "amount": a, "tag": tag},
                priority=Priority.NORMAL,
            )
            if name == "ledger_many":
                many = args.many
                self.send_many = lambda work: [
                    qm.enqueue_many(
                        "default",
                        "hincr",
                        [{"user": u, "amount": a} for u, a in work[i : i + many]],
                        Priority.NORMAL,
                    )
                    for i in range(0, len(work), many)
                ]
        else:
            os.environ.update(self.env)
            from bench import peer_dramatiq

            actor = peer_dramatiq.hincr
            self.send = lambda u, a, tag: actor.send(u, a, tag)

    def start(self) -> list[subprocess.Popen[bytes]]:
        log = self.tmp / f"{self.name}-workers.log"
        if self.is_ledger:
            return [
                spawn(
                    ledger(
                        "worker",
                        "--redis-url",
                        self.url,
                        "--partitions",
                        str(PARTITIONS),
                        "--import",
                        "bench.peer_handlers",
                        "--concurrency",
                        str(self.args.concurrency),
                        "--log-level",
                        "WARNING",
                    ),
                    log,
                    self.env,
                )
                for _ in range(self.args.processes)
            ]
        import sys

        return [
            spawn(
                [
                    sys.executable,
                    "-m",
                    "dramatiq",
                    "bench.peer_dramatiq",
                    "--processes",
                    str(self.args.processes),
                    "--threads",
                    str(self.args.threads),
                ],
                log,
                self.env,
            )
        ]

    def wait_ready(self, client: redis.Redis) -> None:
        """One warm-up message through the running workers (amount 0, then forgotten)."""
        self.send("warmup", 0, "warmup")
        ok = wait_until(lambda: bool(client.hexists(f"{self.key}:done", "warmup")), 60)
        client.hdel(f"{self.key}:done", "warmup")
        client.hdel(self.key, "warmup")
        if not ok:
            raise RuntimeError(f"{self.name} workers did not come up (see {self.tmp})")


def drain(
    sys_: System,
    client: redis.Redis,
    redis_pid: int,
    n: int,
    users: int,
    rng: random.Random,
    expected: dict[str, int],
) -> dict[str, Any]:
    work = [(f"u{rng.randrange(users):04d}", rng.randrange(1, 100)) for _ in range(n)]
    for u, a in work:
        expected[u] = expected.get(u, 0) + a
    amount = sum(a for _, a in work)
    me = os.getpid()
    c_me, c_redis = cpu_ms([me]), cpu_ms([redis_pid])
    t0 = time.perf_counter()
    if sys_.send_many is not None:
        sys_.send_many(work)
    else:
        for u, a in work:
            sys_.send(u, a, None)
    enq_s = time.perf_counter() - t0
    enq_cpu = cpu_ms([me]) - c_me + cpu_ms([redis_pid]) - c_redis
    procs = sys_.start()
    pids = [p.pid for p in procs]
    try:
        base = total(client, sys_.key)
        want = base + amount
        first: tuple[float, int, float] | None = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            now_total = total(client, sys_.key)
            if first is None and now_total > base:
                first = (time.perf_counter(), now_total, cpu_ms([*pids, redis_pid]))
            if now_total >= want:
                break
            time.sleep(0.01)
        t_end, cpu_end = time.perf_counter(), cpu_ms([*pids, redis_pid])
    finally:
        stop(procs)
    assert first is not None
    got = hash_ints(client, sys_.key)
    ok = got == expected
    # tasks done by the first observation: estimated from the amounts seen
    done_frac = (first[1] - base) / amount
    counted = n - int(done_frac * n)
    secs = t_end - first[0]
    drain_cpu = cpu_end - first[2]
    return {
        "tasks": n,
        "enqueue_s": round(enq_s, 3),
        "enqueue_per_s": round(n / enq_s),
        "drain_tasks_timed": counted,
        "drain_s": round(secs, 3),
        "drain_per_s": round(counted / secs),
        "cpu_ms_enqueue_per_task": round(enq_cpu / n, 3),
        "cpu_ms_drain_per_task": round(drain_cpu / counted, 3),
        "cpu_ms_per_task": round(enq_cpu / n + drain_cpu / counted, 3),
        "totals_ok": ok,
    }


def latency(
    sys_: System,
    client: redis.Redis,
    rate: float,
    secs: float,
    users: int,
    rng: random.Random,
    expected: dict[str, int],
) -> dict[str, Any]:
    procs = sys_.start()
    try:
        sys_.wait_ready(client)
        sent: dict[str, float] = {}
        n = int(rate * secs)
        t0 = time.time()
        for i in range(n):
            due = t0 + i / rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            u, a = f"u{rng.randrange(users):04d}", rng.randrange(1, 100)
            expected[u] = expected.get(u, 0) + a
            tag = f"t{i}"
            sent[tag] = time.time() * 1000
            sys_.send(u, a, tag)
        behind = time.time() - (t0 + n / rate)
        done_key = f"{sys_.key}:done"
        wait_until(lambda: client.hlen(done_key) >= n, 60, 0.05)
        done = hash_ints(client, done_key)
    finally:
        stop(procs)
    lat = [round(done[t] - s, 1) for t, s in sent.items() if t in done]
    got = hash_ints(client, sys_.key)
    return {
        "offered_per_s": rate,
        "seconds": secs,
        "sent": n,
        "done": len(lat),
        "producer_behind_s": round(behind, 3),
        "latency_ms": summary(lat),
        "totals_ok": got == expected,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--processes", type=int, default=2, help="worker processes, each system")
    ap.add_argument("--threads", type=int, default=8, help="Dramatiq threads per process")
    ap.add_argument(
        "--concurrency", type=int, default=4, help="ledger consumers (threads) per worker process"
    )
    ap.add_argument("--latency-s", type=float, default=10.0)
    ap.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offered load for the latency phase (default: half the slower drain)",
    )
    ap.add_argument(
        "--many",
        type=int,
        default=500,
        help="tasks per enqueue_many call (the ledger's second run)",
    )
    ap.add_argument("--raw", type=int, default=20_000, help="raw HINCRBY calls (the floor)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp_s, EmbeddedRedis(Path(tmp_s) / "redis") as rs:
        tmp = Path(tmp_s)
        f = facts(rs.url)
        print_facts(f)
        client = redis.Redis.from_url(rs.url)
        assert rs.pid is not None
        broker_url = rs.url.rsplit("/", 1)[0] + "/1"

        t0 = time.perf_counter()
        for i in range(args.raw):
            client.hincrby("bench:raw", f"u{i % 1000}", 1)
        raw_rate = args.raw / (time.perf_counter() - t0)
        print(f"raw HINCRBY one by one: {raw_rate:,.0f}/s", flush=True)

        systems = {
            name: System(name, rs.url, broker_url, args, tmp)
            for name in ("ledger", "ledger_many", "dramatiq")
        }
        expected: dict[str, dict[str, int]] = {name: {} for name in systems}
        results: dict[str, dict[str, Any]] = {}
        for name, s in systems.items():
            results[name] = {
                "drain": drain(
                    s, client, rs.pid, args.tasks, args.users, random.Random(1), expected[name]
                )
            }
            d = results[name]["drain"]
            print(
                f"{LABELS[name]:<22} enqueue {d['enqueue_per_s']:>7,}/s  drain "
                f"{d['drain_per_s']:>7,}/s  CPU {d['cpu_ms_per_task']:.3f} ms/task  "
                f"totals ok: {d['totals_ok']}",
                flush=True,
            )
        rate = args.rate or round(min(r["drain"]["drain_per_s"] for r in results.values()) / 2)
        for name in ("ledger", "dramatiq"):
            results[name]["latency"] = latency(
                systems[name],
                client,
                rate,
                args.latency_s,
                args.users,
                random.Random(2),
                expected[name],
            )
            lt = results[name]["latency"]
            print(
                f"{name:<9} at {rate}/s: p50 {lt['latency_ms']['p50']} ms  p99 "
                f"{lt['latency_ms']['p99']} ms  max {lt['latency_ms']['max']} ms  "
                f"({lt['done']}/{lt['sent']} done, totals ok: {lt['totals_ok']})",
                flush=True,
            )
        client.close()

    theirs = results["dramatiq"]
    ratios = {
        name: {
            "drain": results[name]["drain"]["drain_per_s"] / theirs["drain"]["drain_per_s"],
            "cpu": results[name]["drain"]["cpu_ms_per_task"] / theirs["drain"]["cpu_ms_per_task"],
        }
        for name in ("ledger", "ledger_many")
    }
    rows = [
        ("drain, tasks/s", "drain_per_s", "{:,}"),
        ("enqueue, tasks/s", "enqueue_per_s", "{:,}"),
        ("CPU ms per task (all processes)", "cpu_ms_per_task", "{:.3f}"),
        ("  of which enqueue side", "cpu_ms_enqueue_per_task", "{:.3f}"),
        ("  of which drain side", "cpu_ms_drain_per_task", "{:.3f}"),
    ]
    print(
        f"\n{args.tasks} HINCRBY tasks, {args.processes} worker processes each "
        f"(ledger --concurrency {args.concurrency}, dramatiq --threads {args.threads}); "
        f"ratios are ledger / dramatiq"
    )
    print(
        f"{'figure':<34}{'ledger':>10}{'ratio':>7}{'ledger, many':>14}{'ratio':>7}{'dramatiq':>10}"
    )
    for label, key, fmt in rows:
        a, m, b = (results[n]["drain"][key] for n in ("ledger", "ledger_many", "dramatiq"))
        print(
            f"{label:<34}{fmt.format(a):>10}{a / b:>7.2f}{fmt.format(m):>14}{m / b:>7.2f}"
            f"{fmt.format(b):>10}"
        )
    for q in ("p50", "p99", "max"):
        a, b = (results[n]["latency"]["latency_ms"][q] for n in ("ledger", "dramatiq"))
        print(
            f"{'latency ' + q + ' ms at ' + str(rate) + '/s':<34}{a:>10.1f}"
            f"{(a / b if b else float('nan')):>7.2f}{'':>21}{b:>10.1f}"
        )
    checked = {
        LABELS[n]: r["drain"]["totals_ok"] and r.get("latency", {"totals_ok": True})["totals_ok"]
        for n, r in results.items()
    }
    print(
        "totals checked (every user's sum equals what was enqueued): "
        + ", ".join(f"{k} {v}" for k, v in checked.items())
    )
    for n in ("ledger", "dramatiq"):
        lt = results[n]["latency"]
        if lt["done"] < lt["sent"]:
            print(
                f"  {LABELS[n]}: {lt['sent'] - lt['done']} of {lt['sent']} latency-phase tasks "
                "not done within 60 s of the last send"
            )
    targets = {}
    for name in ("ledger", "ledger_many"):
        r = ratios[name]
        targets[name] = {
            "drain >= 3x dramatiq": r["drain"] >= 3,
            "cpu/task <= 0.5x dramatiq": r["cpu"] <= 0.5,
        }
        print(
            f"targets, {LABELS[name]}: drain ratio {r['drain']:.2f} (>= 3: "
            f"{r['drain'] >= 3}), CPU ratio {r['cpu']:.2f} (<= 0.5: {r['cpu'] <= 0.5})"
        )
    write(
        "peers",
        {
            "facts": f,
            "args": vars(args),
            "raw_hincrby_per_s": round(raw_rate),
            "latency_rate_per_s": rate,
            "results": results,
            "ratios": {n: {k: round(v, 3) for k, v in r.items()} for n, r in ratios.items()},
            "totals_ok": checked,
            "targets": targets,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
