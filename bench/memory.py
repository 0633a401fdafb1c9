"""Redis memory per event and per account, peak RSS per process, bounded streams.

    python -m bench.memory [--accounts 2000] [--events 20000] [--minutes 1] [--rate 100]

  per event / account   fresh redis-server: INFO used_memory before/after
        registering ``--accounts`` accounts, then after ``--events`` credit events
        (append_batch); MEMORY USAGE of every stream and a sample of account and
        transaction keys; raw XADD of the same count (six varying fields, a 40-hex
        hash among them) is the floor
  bounded streams       `ledger serve`, 2 x `ledger worker`, `ledger project
        --trim-after-ms 2000`, `ledger scheduler` under a steady load of
        ``--rate`` purchases/s through the HTTP API for ``--minutes`` (the issue's
        long run: ``--minutes 10``); XLEN of all streams and used_memory sampled
        every second: max and final
  peak RSS              VmHWM from /proc/<pid>/status of each process at the end

Writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from api.dev.embedded import EmbeddedMongo, EmbeddedRedis, free_port
from api.dev.loadgen import credit_traffic, registrations, user_ids
from bench.common import (
    api_up,
    facts,
    ledger,
    peak_rss_kb,
    print_facts,
    spawn,
    stop,
    wait_until,
    write,
)
from ledger.tasks import Priority
from streams import QueueManager, StreamsConfig, keys

PARTITIONS = 4


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def usage(client: redis.Redis, pattern: str, limit: int | None = None) -> tuple[int, int]:
    """(keys, total MEMORY USAGE bytes) over keys matching ``pattern``."""
    names = list(client.scan_iter(match=pattern, count=1000))[:limit]
    total = sum(int(client.memory_usage(k, samples=0) or 0) for k in names)
    return len(names), total


def xlen_all(client: redis.Redis) -> int:
    return sum(
        int(client.xlen(keys.stream(p, lv)))
        for p in keys.partitions(PARTITIONS)
        for lv in keys.LEVELS_DESC
    )


def per_event(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    with EmbeddedRedis(tmp / "r1") as rs:
        client = redis.Redis.from_url(rs.url)
        qm = QueueManager(config=StreamsConfig(redis_url=rs.url, partitions=PARTITIONS))
        qm.append_batch([])  # partitions recorded
        m0 = used(client)
        users = user_ids(args.accounts, prefix="mem")
        regs = registrations(users)
        for i in range(0, len(regs), 500):
            qm.append_batch([(c, Priority.NORMAL, None) for c in regs[i : i + 500]])
        m1 = used(client)
        cmds = list(credit_traffic(users, args.events, seed=4))
        for i in range(0, len(cmds), 500):
            qm.append_batch([(c, Priority.NORMAL, None) for c in cmds[i : i + 500]])
        m2 = used(client)
        n_events = xlen_all(client)
        credit_events = n_events - args.accounts
        streams = sum(
            int(client.memory_usage(keys.stream(p, lv), samples=0) or 0)
            for p in keys.partitions(PARTITIONS)
            for lv in keys.LEVELS_DESC
        )
        n_acct, acct = usage(client, "ledger:{p*}:acct:*", 500)
        n_txn, txn = usage(client, "ledger:{p*}:txn:*", 500)
        client.flushall()
        m3 = used(client)
        pipe = client.pipeline(transaction=False)
        for i in range(n_events):  # varying values and a 40-hex hash, like an event
            fields: dict[Any, Any] = {
                "k": "credits_used",
                "u": f"mem-{i % 2000:05d}",
                "v": i % 97,
                "a": -50 - i % 7,
                "b": 950 + i,
                "h": hashlib.sha1(str(i).encode()).hexdigest(),
            }
            pipe.xadd("raw", fields)
        pipe.execute()
        raw_used = used(client) - m3
        raw_stream = int(client.memory_usage("raw", samples=0) or 0)
        qm.close()
        client.close()
    return {
        "accounts": args.accounts,
        "credit_events_accepted": credit_events,
        "stream_entries": n_events,
        "used_per_account_with_registration_B": round((m1 - m0) / args.accounts),
        "used_per_credit_event_B": round((m2 - m1) / credit_events),
        "stream_bytes_per_entry_B": round(streams / n_events),
        "account_hash_B": round(acct / max(1, n_acct)),
        "txn_hash_per_account_B": round(txn / max(1, n_txn)),
        "raw_xadd_used_per_entry_B": round(raw_used / n_events),
        "raw_stream_bytes_per_entry_B": round(raw_stream / n_events),
    }


def bounded(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    with EmbeddedRedis(tmp / "r2") as rs, EmbeddedMongo(tmp / "m2") as ms:
        client = redis.Redis.from_url(rs.url)
        common = [
            "--redis-url",
            rs.url,
            "--mongo-url",
            ms.url,
            "--partitions",
            str(PARTITIONS),
            "--log-level",
            "WARNING",
        ]
        port = free_port()
        log = tmp / "procs.log"
        kinds = {
            "api": spawn(ledger("serve", *common, "--port", str(port)), log),
            "worker-1": spawn(ledger("worker", *common, "--concurrency", "4"), log),
            "worker-2": spawn(ledger("worker", *common, "--concurrency", "4"), log),
            "projector": spawn(ledger("project", *common, "--trim-after-ms", "2000"), log),
            "scheduler": spawn(ledger("scheduler", *common), log),
        }
        samples: list[tuple[float, int, int]] = []
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

            def post(path: str, body: dict[str, Any]) -> int:
                conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                return resp.status

            if not wait_until(lambda: api_up(port), 60, 0.2):
                raise RuntimeError(f"API did not come up (see {log})")
            users = user_ids(200, prefix="mem")
            for u in users:
                post("/api/users", {"user_id": u, "email": f"{u}@example.com"})
            secs = args.minutes * 60
            n = int(args.rate * secs)
            t0 = time.time()
            next_sample = t0
            statuses: dict[int, int] = {}
            for i in range(n):
                while (delay := t0 + i / args.rate - time.time()) > 0:
                    time.sleep(min(delay, 0.01))
                if time.time() >= next_sample:
                    samples.append((round(time.time() - t0, 1), xlen_all(client), used(client)))
                    next_sample += 1.0
                s = post(
                    f"/api/accounts/{users[i % len(users)]}/purchases",
                    {"amount": 10, "currency": "USD", "transaction_id": f"m-{i}"},
                )
                statuses[s] = statuses.get(s, 0) + 1
            samples.append((round(time.time() - t0, 1), xlen_all(client), used(client)))
            rss = {k: peak_rss_kb(p.pid) for k, p in kinds.items()}
            conn.close()
        finally:
            stop(list(kinds.values()))
        client.close()
    lens = [s[1] for s in samples]
    return {
        "seconds": secs,
        "rate_per_s": args.rate,
        "http_statuses": statuses,
        "xlen_max": max(lens),
        "xlen_final": lens[-1],
        "used_memory_max_B": max(s[2] for s in samples),
        "used_memory_final_B": samples[-1][2],
        "appended": n,
        "peak_rss_kB": rss,
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--accounts", type=int, default=2000)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--minutes", type=float, default=1.0, help="steady-load duration")
    ap.add_argument("--rate", type=float, default=100.0, help="purchases/s over HTTP")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        with EmbeddedRedis(tmp / "r0") as rs:
            f = facts(rs.url)
        print_facts(f)
        pe = per_event(args, tmp)
        print(
            f"\nRedis bytes ({pe['accounts']} accounts, {pe['credit_events_accepted']} "
            f"accepted credit events, {pe['stream_entries']} stream entries)"
        )
        for k, v in pe.items():
            if k.endswith("_B"):
                print(f"  {k[:-2].replace('_', ' '):<44}{v:>8,} B")
        print(
            f"  ratio used per credit event / raw XADD entry  "
            f"{pe['used_per_credit_event_B'] / pe['raw_xadd_used_per_entry_B']:>8.2f}",
            flush=True,
        )
        bd = bounded(args, tmp)
    print(
        f"\nsteady {bd['rate_per_s']:g} purchases/s over HTTP for {bd['seconds']:g} s with "
        f"`ledger project --trim-after-ms 2000` (HTTP statuses {bd['http_statuses']})"
    )
    print(
        f"  XLEN of all streams: max {bd['xlen_max']:,}, final {bd['xlen_final']:,} "
        f"(of {bd['appended']:,} appended)"
    )
    print(
        f"  used_memory: max {bd['used_memory_max_B'] / 2**20:.1f} MiB, final "
        f"{bd['used_memory_final_B'] / 2**20:.1f} MiB"
    )
    print(
        "  peak RSS (VmHWM): "
        + ", ".join(f"{k} {v / 1024:.0f} MiB" for k, v in bd["peak_rss_kB"].items())
    )
    write("memory", {"facts": f, "args": vars(args), "per_event": pe, "bounded": bd})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
