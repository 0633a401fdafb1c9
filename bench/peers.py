"""The same task through this project and through Dramatiq (Redis broker), same run.

    python -m bench.peers [--tasks 20000] [--processes 2] [--threads 8] [--latency-s 10]

Workload: a task whose handler does one HINCRBY of ``amount`` into a per-user
hash (``bench.peer_handlers`` / ``bench.peer_dramatiq``), on one private
redis-server (ledger on DB 0, Dramatiq's broker on DB 1, sums in DB 0 under
separate keys). For each system, in turn:

  enqueue   ``--tasks`` tasks one by one from this process (qm.enqueue / actor.send)
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

from api.embedded import EmbeddedRedis
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
SUMS = {"ledger": "bench:sum:ledger", "dramatiq": "bench:sum:dramatiq"}


def total(client: redis.Redis, key: str) -> int:
    return sum(int(v) for v in client.hvals(key))


def hash_ints(client: redis.Redis, key: str) -> dict[str, int]:
    return {(k.decode() if isinstance(k, bytes) else k): int(v)
            for k, v in client.hgetall(key).items()}


class System:
    """How to enqueue to, and run workers of, one of the two systems."""

    def __init__(self, name: str, url: str, broker_url: str, args: argparse.Namespace,
                 tmp: Path) -> None:
        self.name, self.url, self.args, self.tmp = name, url, args, tmp
        self.key = SUMS[name]
        self.env = {"BENCH_REDIS_URL": url, "BENCH_SUM_KEY": self.key,
                    "BENCH_DRAMATIQ_URL": broker_url}
        self.send: Callable[[str, int, str | None], Any]
        if name == "ledger":
            qm = QueueManager(config=StreamsConfig(redis_url=url, partitions=PARTITIONS))
            self.send = lambda u, a, tag: qm.enqueue(
                "default", "hincr", {"user": u, "amount": a} if tag is None
                else {"user": u, "amount": a, "tag": tag}, priority=Priority.NORMAL)
        else:
            os.environ.update(self.env)
            from bench import peer_dramatiq
            actor = peer_dramatiq.hincr
            self.send = lambda u, a, tag: actor.send(u, a, tag)

    def start(self) -> list[subprocess.Popen[bytes]]:
        log = self.tmp / f"{self.name}-workers.log"
        if self.name == "ledger":
            return [spawn(ledger("worker", "--redis-url", self.url, "--partitions",
                                 str(PARTITIONS), "--import", "bench.peer_handlers",
                                 "--concurrency", str(self.args.concurrency),
                                 "--log-level", "WARNING"), log, self.env)
                    for _ in range(self.args.processes)]
        import sys
        return [spawn([sys.executable, "-m", "dramatiq", "bench.peer_dramatiq",
                       "--processes", str(self.args.processes),
                       "--threads", str(self.args.threads)], log, self.env)]

    def wait_ready(self, client: redis.Redis) -> None:
        """One warm-up message through the running workers (amount 0, then forgotten)."""
        self.send("warmup", 0, "warmup")
        ok = wait_until(lambda: bool(client.hexists(f"{self.key}:done", "warmup")), 60)
        client.hdel(f"{self.key}:done", "warmup")
        client.hdel(self.key, "warmup")
        if not ok:
            raise RuntimeError(f"{self.name} workers did not come up (see {self.tmp})")


def drain(sys_: System, client: redis.Redis, redis_pid: int, n: int, users: int,
          rng: random.Random, expected: dict[str, int]) -> dict[str, Any]:
    work = [(f"u{rng.randrange(users):04d}", rng.randrange(1, 100)) for _ in range(n)]
    for u, a in work:
        expected[u] = expected.get(u, 0) + a
    amount = sum(a for _, a in work)
    me = os.getpid()
    c_me, c_redis = cpu_ms([me]), cpu_ms([redis_pid])
    t0 = time.perf_counter()
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
    return {"tasks": n, "enqueue_s": round(enq_s, 3), "enqueue_per_s": round(n / enq_s),
            "drain_tasks_timed": counted, "drain_s": round(secs, 3),
            "drain_per_s": round(counted / secs),
            "cpu_ms_enqueue_per_task": round(enq_cpu / n, 3),
            "cpu_ms_drain_per_task": round(drain_cpu / counted, 3),
            "cpu_ms_per_task": round(enq_cpu / n + drain_cpu / counted, 3),
            "totals_ok": ok}


def latency(sys_: System, client: redis.Redis, rate: float, secs: float, users: int,
            rng: random.Random, expected: dict[str, int]) -> dict[str, Any]:
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
    return {"offered_per_s": rate, "seconds": secs, "sent": n, "done": len(lat),
            "producer_behind_s": round(behind, 3), "latency_ms": summary(lat),
            "totals_ok": got == expected}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--processes", type=int, default=2, help="worker processes, each system")
    ap.add_argument("--threads", type=int, default=8, help="Dramatiq threads per process")
    ap.add_argument("--concurrency", type=int, default=8,
                    help="ledger consumers (threads) per worker process")
    ap.add_argument("--latency-s", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=0.0,
                    help="offered load for the latency phase (default: half the slower drain)")
    ap.add_argument("--raw", type=int, default=20_000, help="raw HINCRBY calls (the floor)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp_s, \
            EmbeddedRedis(Path(tmp_s) / "redis") as rs:
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

        systems = {name: System(name, rs.url, broker_url, args, tmp)
                   for name in ("ledger", "dramatiq")}
        expected: dict[str, dict[str, int]] = {name: {} for name in systems}
        results: dict[str, dict[str, Any]] = {}
        for name, s in systems.items():
            results[name] = {"drain": drain(s, client, rs.pid, args.tasks, args.users,
                                            random.Random(1), expected[name])}
            d = results[name]["drain"]
            print(f"{name:<9} enqueue {d['enqueue_per_s']:>7,}/s  drain {d['drain_per_s']:>7,}/s"
                  f"  CPU {d['cpu_ms_per_task']:.3f} ms/task  totals ok: {d['totals_ok']}",
                  flush=True)
        rate = args.rate or round(min(r["drain"]["drain_per_s"] for r in results.values()) / 2)
        for name, s in systems.items():
            results[name]["latency"] = latency(s, client, rate, args.latency_s, args.users,
                                               random.Random(2), expected[name])
            lt = results[name]["latency"]
            print(f"{name:<9} at {rate}/s: p50 {lt['latency_ms']['p50']} ms  p99 "
                  f"{lt['latency_ms']['p99']} ms  max {lt['latency_ms']['max']} ms  "
                  f"({lt['done']}/{lt['sent']} done, totals ok: {lt['totals_ok']})", flush=True)
        client.close()

    ours, theirs = results["ledger"], results["dramatiq"]
    drain_ratio = ours["drain"]["drain_per_s"] / theirs["drain"]["drain_per_s"]
    cpu_ratio = ours["drain"]["cpu_ms_per_task"] / theirs["drain"]["cpu_ms_per_task"]
    rows = [
        ("drain, tasks/s", "drain", "drain_per_s", "{:,}"),
        ("enqueue one by one, tasks/s", "drain", "enqueue_per_s", "{:,}"),
        ("CPU ms per task (all processes)", "drain", "cpu_ms_per_task", "{:.3f}"),
        ("  of which enqueue side", "drain", "cpu_ms_enqueue_per_task", "{:.3f}"),
        ("  of which drain side", "drain", "cpu_ms_drain_per_task", "{:.3f}"),
    ]
    print(f"\n{args.tasks} HINCRBY tasks, {args.processes} worker processes each "
          f"(ledger --concurrency {args.concurrency}, dramatiq --threads {args.threads})")
    print(f"{'figure':<36}{'ledger':>12}{'dramatiq':>12}{'ratio':>9}")
    for label, phase, key, fmt in rows:
        a, b = ours[phase][key], theirs[phase][key]
        print(f"{label:<36}{fmt.format(a):>12}{fmt.format(b):>12}{a / b:>9.2f}")
    for q in ("p50", "p99", "max"):
        a, b = ours["latency"]["latency_ms"][q], theirs["latency"]["latency_ms"][q]
        print(f"{'latency ' + q + ' ms at ' + str(rate) + '/s':<36}{a:>12.1f}{b:>12.1f}"
              f"{(a / b if b else float('nan')):>9.2f}")
    checked = [str(r["drain"]["totals_ok"] and r["latency"]["totals_ok"]) for r in (ours, theirs)]
    print(f"{'totals checked':<36}{checked[0]:>12}{checked[1]:>12}")
    targets = {"drain >= 3x dramatiq": drain_ratio >= 3,
               "cpu/task <= 0.5x dramatiq": cpu_ratio <= 0.5}
    print(f"targets: drain ratio {drain_ratio:.2f} (>= 3: {targets['drain >= 3x dramatiq']}), "
          f"CPU ratio {cpu_ratio:.2f} (<= 0.5: {targets['cpu/task <= 0.5x dramatiq']})")
    write("peers", {"facts": f, "args": vars(args), "raw_hincrby_per_s": round(raw_rate),
                    "latency_rate_per_s": rate, "results": results,
                    "drain_ratio": round(drain_ratio, 3), "cpu_ratio": round(cpu_ratio, 3),
                    "targets": targets})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
