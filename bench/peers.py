"""The same task through this project, Dramatiq (Redis broker) and a hand-rolled
XREADGROUP loop (``bench.peer_loop``), same run, same redis-server.

    python -m bench.peers [--tasks 20000] [--processes 2] [--threads 8] [--latency-s 10]
                          [--rate 500] [--partitions 16] [--concurrency N]

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
            /proc/<pid>/stat utime+stime; each kind of process on its own too
  memory    Redis ``used_memory`` after the drain (workers stopped, Redis settled:
            ``settled_memory``) less before the
            enqueue, per task: what the system keeps per finished task (measured
            after one warm-up message went through its workers, so that what is
            set up once, such as consumer groups and scripts, is not counted)
  trickle   restart the workers (warm), offer a fixed load (``--rate``, 500/s) for
            ``--latency-s`` seconds: enqueue->done p50/p99/max (the handler records
            its done time in the same round trip as HINCRBY); Redis commands per
            task end to end (``INFO commandstats`` deltas, commands run inside Lua
            scripts included, / tasks), Redis time per task by command (the
            same deltas' usec) and CPU per task of each kind of process

The ledger workers run with their defaults (``ledger worker --import
bench.peer_handlers``: the queues' consumer threads) unless ``--concurrency``.

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
from streams.config import DEFAULT_PARTITIONS

SUMS = {
    "ledger": "bench:sum:ledger",
    "ledger_many": "bench:sum:ledger-many",
    "dramatiq": "bench:sum:dramatiq",
    "loop": "bench:sum:loop",
}
LABELS = {
    "ledger": "ledger",
    "ledger_many": "ledger, enqueue_many",
    "dramatiq": "dramatiq",
    "loop": "XREADGROUP loop",
}


def commandstats(client: redis.Redis, figure: str = "calls") -> dict[str, int]:
    """Per command, ``figure`` so far from ``INFO commandstats``: "calls" (commands
    run inside scripts included) or "usec" (a script's time includes its calls')."""
    return {
        k.removeprefix("cmdstat_"): int(v[figure])
        for k, v in client.info("commandstats").items()
        if isinstance(v, dict)
    }


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    out = {k: v - before.get(k, 0) for k, v in after.items()}
    return {k: v for k, v in out.items() if v > 0}


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def settled_memory(client: redis.Redis, most_s: float = 3.0) -> int:
    """``used_memory`` once Redis has shrunk what the load grew and no longer holds
    (the keyspace's hash tables are resized by its cron, ~100 ms apart): two equal
    reads 300 ms apart, or what it is after ``most_s``."""
    deadline = time.monotonic() + most_s
    last = used_memory(client)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = used_memory(client)
        if now == last:
            break
        last = now
    return last


def total(client: redis.Redis, key: str) -> int:
    return sum(int(v) for v in client.hvals(key))


def hash_ints(client: redis.Redis, key: str) -> dict[str, int]:
    return {
        (k.decode() if isinstance(k, bytes) else k): int(v) for k, v in client.hgetall(key).items()
    }


class System:
    """How to enqueue to, and run workers of, one of the two systems."""

    handlers = "bench.peer_handlers"
    """The module ``ledger worker --import`` loads for the ledger's workers."""

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
        if name == "loop":
            from bench import peer_loop

            loop_client = redis.Redis.from_url(url)
            peer_loop.ensure_group(loop_client)
            self.send = lambda u, a, tag: peer_loop.send(loop_client, u, a, tag)
        elif self.is_ledger:
            qm = QueueManager(config=StreamsConfig(redis_url=url, partitions=args.partitions))
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
        import sys

        log = self.tmp / f"{self.name}-workers.log"
        if self.name == "loop":
            return [
                spawn([sys.executable, "-m", "bench.peer_loop"], log, self.env)
                for _ in range(self.args.processes)
            ]
        if self.is_ledger:
            concurrency = (
                []
                if self.args.concurrency is None
                else ["--concurrency", str(self.args.concurrency)]
            )
            return [
                spawn(
                    ledger(
                        "worker",
                        "--redis-url",
                        self.url,
                        "--partitions",
                        str(self.args.partitions),
                        "--import",
                        self.handlers,
                        *concurrency,
                        "--log-level",
                        "WARNING",
                    ),
                    log,
                    self.env,
                )
                for _ in range(self.args.processes)
            ]

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
    # one message through started workers first: what a system sets up once (groups,
    # scripts, consumers) is not memory kept per task
    procs = sys_.start()
    try:
        sys_.wait_ready(client)
    finally:
        stop(procs)
    mem0 = used_memory(client)
    c_me, c_redis = cpu_ms([me]), cpu_ms([redis_pid])
    t0 = time.perf_counter()
    if sys_.send_many is not None:
        sys_.send_many(work)
    else:
        for u, a in work:
            sys_.send(u, a, None)
    enq_s = time.perf_counter() - t0
    enq_producer = cpu_ms([me]) - c_me
    enq_redis = cpu_ms([redis_pid]) - c_redis
    enq_cpu = enq_producer + enq_redis
    procs = sys_.start()
    pids = [p.pid for p in procs]
    try:
        base = total(client, sys_.key)
        want = base + amount
        first: tuple[float, int, float, float] | None = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            now_total = total(client, sys_.key)
            if first is None and now_total > base:
                first = (time.perf_counter(), now_total, cpu_ms(pids), cpu_ms([redis_pid]))
            if now_total >= want:
                break
            time.sleep(0.01)
        t_end, cpu_w_end, cpu_r_end = time.perf_counter(), cpu_ms(pids), cpu_ms([redis_pid])
    finally:
        stop(procs)
    assert first is not None
    retained = settled_memory(client) - mem0
    got = hash_ints(client, sys_.key)
    ok = got == expected
    # tasks done by the first observation: estimated from the amounts seen
    done_frac = (first[1] - base) / amount
    counted = n - int(done_frac * n)
    secs = t_end - first[0]
    drain_workers, drain_redis = cpu_w_end - first[2], cpu_r_end - first[3]
    drain_cpu = drain_workers + drain_redis
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
        "cpu_ms_per_task_by_kind": {
            "producer": round(enq_producer / n, 3),
            "workers": round(drain_workers / counted, 3),
            "redis-server": round(enq_redis / n + drain_redis / counted, 3),
        },
        "redis_bytes_retained_per_task": round(retained / n, 1),
        "totals_ok": ok,
    }


def latency(
    sys_: System,
    client: redis.Redis,
    redis_pid: int,
    rate: float,
    secs: float,
    users: int,
    rng: random.Random,
    expected: dict[str, int],
) -> dict[str, Any]:
    procs = sys_.start()
    try:
        sys_.wait_ready(client)
        time.sleep(0.5)  # warm: the ready task settled
        pids = [p.pid for p in procs]
        sent: dict[str, float] = {}
        n = int(rate * secs)
        cmds0, usec0 = commandstats(client), commandstats(client, "usec")
        cpu0 = (cpu_ms([os.getpid()]), cpu_ms(pids), cpu_ms([redis_pid]))
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
        # what the workers do while idle counts too: as long again as the last task took
        time.sleep(max(0.0, min(2.0, time.time() - (t0 + n / rate))))
        cpu1 = (cpu_ms([os.getpid()]), cpu_ms(pids), cpu_ms([redis_pid]))
        cmds = delta(commandstats(client), cmds0)
        usec = delta(commandstats(client, "usec"), usec0)
        done = {
            (k.decode() if isinstance(k, bytes) else k): float(v)
            for k, v in client.hgetall(done_key).items()
        }
    finally:
        stop(procs)
    # the bench's own polling (HLEN, INFO) is not the system's
    for own in ("hlen", "info"):
        cmds.pop(own, None)
        usec.pop(own, None)
    lat = [round(done[t] - s, 1) for t, s in sent.items() if t in done]
    got = hash_ints(client, sys_.key)
    return {
        "offered_per_s": rate,
        "seconds": secs,
        "sent": n,
        "done": len(lat),
        "producer_behind_s": round(behind, 3),
        "latency_ms": summary(lat),
        "commands_per_task": round(sum(cmds.values()) / n, 2),
        "commands_per_task_by_command": {
            k: round(v / n, 2) for k, v in sorted(cmds.items(), key=lambda kv: -kv[1])
        },
        "redis_us_per_task_by_command": {
            k: round(v / n, 1) for k, v in sorted(usec.items(), key=lambda kv: -kv[1])
        },
        "cpu_ms_per_task_by_kind": {
            kind: round((b - a) / n, 3)
            for kind, a, b in zip(("producer", "workers", "redis-server"), cpu0, cpu1, strict=True)
        },
        "totals_ok": got == expected,
    }


def peer_arguments(ap: argparse.ArgumentParser) -> None:
    """The options every peer comparison takes (this one and ``bench.batch``)."""
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--processes", type=int, default=2, help="worker processes, each system")
    ap.add_argument("--threads", type=int, default=8, help="Dramatiq threads per process")
    ap.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="ledger consumers (threads) per worker process (default: the worker's own)",
    )
    ap.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS)


SYSTEMS = ("ledger", "ledger_many", "dramatiq", "loop")
TRICKLE = ("ledger", "dramatiq", "loop")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    peer_arguments(ap)
    ap.add_argument("--latency-s", type=float, default=10.0)
    ap.add_argument(
        "--rate", type=float, default=500.0, help="offered load of the trickle (latency) phase"
    )
    ap.add_argument(
        "--many",
        type=int,
        default=500,
        help="tasks per enqueue_many call (the ledger's second run)",
    )
    ap.add_argument("--raw", type=int, default=20_000, help="raw HINCRBY calls (the floor)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="the ledger alone (no ratios, no targets): for trying a change",
    )
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
        client.delete("bench:raw")
        print(f"raw HINCRBY one by one: {raw_rate:,.0f}/s", flush=True)

        chosen = ("ledger",) if args.quick else SYSTEMS
        systems = {name: System(name, rs.url, broker_url, args, tmp) for name in chosen}
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
                f"kept {d['redis_bytes_retained_per_task']:.0f} B/task  "
                f"totals ok: {d['totals_ok']}",
                flush=True,
            )
        rate = args.rate
        for name in [n for n in TRICKLE if n in systems]:
            results[name]["latency"] = latency(
                systems[name],
                client,
                rs.pid,
                rate,
                args.latency_s,
                args.users,
                random.Random(2),
                expected[name],
            )
            lt = results[name]["latency"]
            print(
                f"{LABELS[name]:<22} at {rate:g}/s: p50 {lt['latency_ms']['p50']} ms  p99 "
                f"{lt['latency_ms']['p99']} ms  max {lt['latency_ms']['max']} ms  "
                f"{lt['commands_per_task']} commands/task  "
                f"({lt['done']}/{lt['sent']} done, totals ok: {lt['totals_ok']})",
                flush=True,
            )
        client.close()
    if args.quick:
        return 0

    theirs = results["dramatiq"]
    ratios = {
        name: {
            "drain": results[name]["drain"]["drain_per_s"] / theirs["drain"]["drain_per_s"],
            "cpu": results[name]["drain"]["cpu_ms_per_task"] / theirs["drain"]["cpu_ms_per_task"],
        }
        for name in ("ledger", "ledger_many", "loop")
    }
    shown = ("ledger", "ledger_many", "dramatiq", "loop")
    print(
        f"\n{args.tasks} HINCRBY tasks, {args.processes} worker processes each "
        f"(ledger {args.partitions} partitions, --concurrency "
        f"{args.concurrency or 'default'}; dramatiq --threads {args.threads}; "
        f"loop: one stream, COUNT 100)"
    )
    print(f"{'figure':<40}" + "".join(f"{LABELS[n]:>22}" for n in shown))

    def row(label: str, values: list[Any], fmt: str) -> None:
        cells = "".join(f"{'-' if v is None else fmt.format(v):>22}" for v in values)
        print(f"{label:<40}{cells}")

    drains = [results[n]["drain"] for n in shown]
    row("drain, tasks/s", [d["drain_per_s"] for d in drains], "{:,}")
    row("enqueue, tasks/s", [d["enqueue_per_s"] for d in drains], "{:,}")
    row("CPU ms per task (all processes)", [d["cpu_ms_per_task"] for d in drains], "{:.3f}")
    for kind in ("producer", "workers", "redis-server"):
        row(
            f"  of which {kind}",
            [d["cpu_ms_per_task_by_kind"][kind] for d in drains],
            "{:.3f}",
        )
    row(
        "Redis bytes kept per finished task",
        [d["redis_bytes_retained_per_task"] for d in drains],
        "{:.0f}",
    )
    trickles = [results[n].get("latency") for n in shown]
    row(
        f"trickle {rate:g}/s: commands per task",
        [t and t["commands_per_task"] for t in trickles],
        "{:.2f}",
    )
    for kind in ("producer", "workers", "redis-server"):
        row(
            f"  CPU ms per task, {kind}",
            [t and t["cpu_ms_per_task_by_kind"][kind] for t in trickles],
            "{:.3f}",
        )
    for q in ("p50", "p99", "max"):
        row(
            f"  latency {q} ms",
            [t and t["latency_ms"][q] for t in trickles],
            "{:.1f}",
        )
    for n in TRICKLE:
        top = list(results[n]["latency"]["commands_per_task_by_command"].items())[:8]
        print(f"  commands per task, {LABELS[n]}: " + ", ".join(f"{k} {v}" for k, v in top))
        spent = list(results[n]["latency"]["redis_us_per_task_by_command"].items())[:6]
        print(
            f"  redis µs per task, {LABELS[n]} (a script's includes its calls): "
            + ", ".join(f"{k} {v}" for k, v in spent)
        )
    checked = {
        LABELS[n]: r["drain"]["totals_ok"] and r.get("latency", {"totals_ok": True})["totals_ok"]
        for n, r in results.items()
    }
    print(
        "totals checked (every user's sum equals what was enqueued): "
        + ", ".join(f"{k} {v}" for k, v in checked.items())
    )
    for n in TRICKLE:
        lt = results[n]["latency"]
        if lt["done"] < lt["sent"]:
            print(
                f"  {LABELS[n]}: {lt['sent'] - lt['done']} of {lt['sent']} latency-phase tasks "
                "not done within 60 s of the last send"
            )
    targets: dict[str, dict[str, bool]] = {}
    mine, dq = results["ledger"], results["dramatiq"]
    for name in ("ledger", "ledger_many"):
        r = ratios[name]
        targets[name] = {
            "drain >= 3x dramatiq": r["drain"] >= 3,
            "cpu/task <= 0.5x dramatiq": r["cpu"] <= 0.5,
            "bytes kept/task <= 150": results[name]["drain"]["redis_bytes_retained_per_task"]
            <= 150,
        }
    targets["ledger"].update(
        {
            "trickle commands/task <= 8": mine["latency"]["commands_per_task"] <= 8,
            "trickle redis-server CPU/task <= dramatiq's": mine["latency"][
                "cpu_ms_per_task_by_kind"
            ]["redis-server"]
            <= dq["latency"]["cpu_ms_per_task_by_kind"]["redis-server"],
            f"p99 at {rate:g}/s <= 2 ms": (mine["latency"]["latency_ms"]["p99"] or 1e9) <= 2,
        }
    )
    for name, t in targets.items():
        r = ratios[name]
        print(
            f"targets, {LABELS[name]}: drain ratio {r['drain']:.2f}, CPU ratio {r['cpu']:.2f}; "
            + ", ".join(f"{k}: {v}" for k, v in t.items())
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
