"""HTTP append throughput and latency next to the Python client, same Redis, same run.

    python -m bench.http [--seconds 8] [--workers 1,2] [--batch 100] [--clients 16]

Starts a private redis-server (AOF everysec), then for each uvicorn worker
count runs `ledger serve` (rate limit off) and drives it with a closed-loop load
generator: 2 processes x clients/2 threads, each on its own keep-alive
connection, posting single purchases (`POST /api/accounts/{id}/purchases`) and
then batches (`POST /api/events:batch`). The same appends are then made
directly through the Python client. Prints requests/s, events/s, p50/p99 latency
and writes bench/results/http.json. Everything runs on this machine's 2 cores:
the load generator competes with the server for them.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

from api.embedded import EmbeddedRedis, free_port
from api.loadgen import registrations, user_ids
from ledger.commands import Purchase
from ledger.tasks import Priority
from streams import QueueManager, StreamsConfig

RESULTS = Path(__file__).parent / "results"
PARTITIONS = 4
USERS = 2000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _client_loop(port: int, mode: str, batch: int, seconds: float, tag: str,
                 out: list[float], counts: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline:
        i += 1
        user = f"bench-{(hash(tag) + i) % USERS:05d}"
        if mode == "single":
            path = f"/api/accounts/{user}/purchases"
            body: dict[str, Any] = {"amount": 5, "currency": "USD",
                                    "transaction_id": f"{tag}-{i}"}
        else:
            path = "/api/events:batch"
            body = {"events": [{"kind": "purchase",
                                "user_id": f"bench-{(i * batch + j) % USERS:05d}",
                                "amount": 5, "currency": "USD",
                                "transaction_id": f"{tag}-{i}-{j}"} for j in range(batch)]}
        data = json.dumps(body)
        t0 = time.perf_counter()
        conn.request("POST", path, data, headers)
        response = conn.getresponse()
        response.read()
        out.append(time.perf_counter() - t0)
        if response.status not in (200, 201):
            raise RuntimeError(f"{path}: HTTP {response.status}")
        counts[0] += 1
    conn.close()


def _process(port: int, mode: str, batch: int, seconds: float, threads: int, seed: int,
             queue: Any) -> None:
    latencies: list[list[float]] = [[] for _ in range(threads)]
    counts = [[0] for _ in range(threads)]
    pool = [threading.Thread(target=_client_loop,
                             args=(port, mode, batch, seconds, f"{mode}{seed}t{t}{time.time_ns()}",
                                   latencies[t], counts[t])) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    queue.put(([x for xs in latencies for x in xs], sum(c[0] for c in counts)))


def drive(port: int, mode: str, batch: int, seconds: float, clients: int) -> dict[str, Any]:
    queue: Any = mp.Queue()
    procs = [mp.Process(target=_process, args=(port, mode, batch, seconds, clients // 2, i,
                                               queue)) for i in range(2)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - t0
    lat = [x for r in results for x in r[0]]
    requests = sum(r[1] for r in results)
    per = batch if mode == "batch" else 1
    return {"requests_per_s": round(requests / elapsed), "events_per_s":
            round(requests * per / elapsed), "p50_ms": round(percentile(lat, 0.5) * 1000, 2),
            "p99_ms": round(percentile(lat, 0.99) * 1000, 2), "requests": requests}


def python_client(qm: QueueManager, mode: str, batch: int, seconds: float) -> dict[str, Any]:
    lat: list[float] = []
    n = 0
    deadline = time.perf_counter() + seconds
    t_start = time.perf_counter()
    while time.perf_counter() < deadline:
        size = 1 if mode == "single" else batch
        items = [(Purchase(user_id=f"bench-{(n + j) % USERS:05d}", amount=5, currency="USD",
                           transaction_id=f"py-{mode}-{n}-{j}"), Priority.NORMAL, None)
                 for j in range(size)]
        t0 = time.perf_counter()
        qm.append_batch(items)
        lat.append(time.perf_counter() - t0)
        n += size
    elapsed = time.perf_counter() - t_start
    return {"requests_per_s": round(len(lat) / elapsed), "events_per_s": round(n / elapsed),
            "p50_ms": round(percentile(lat, 0.5) * 1000, 2),
            "p99_ms": round(percentile(lat, 0.99) * 1000, 2), "requests": len(lat)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--clients", type=int, default=16)
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp)) as server:
        client = redis.Redis.from_url(server.url)
        qm = QueueManager(config=StreamsConfig(redis_url=server.url, partitions=PARTITIONS),
                          client=client)
        qm.append_batch([(c, Priority.NORMAL, None) for c in
                         registrations(user_ids(USERS, prefix="bench"))])
        for workers in (int(w) for w in args.workers.split(",")):
            port = free_port()
            env = {**os.environ, "REDIS_URL": server.url, "LEDGER_PARTITIONS": str(PARTITIONS)}
            env.pop("MONGO_URL", None)
            serve = subprocess.Popen([sys.executable, "-m", "api", "serve", "--port", str(port),
                                      "--workers", str(workers), "--rate-per-s", "0",
                                      "--log-level", "WARNING"], env=env)
            try:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                        c.request("GET", "/health")
                        if c.getresponse().status == 200:
                            break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.2)
                for mode in ("single", "batch"):
                    r = drive(port, mode, args.batch, args.seconds, args.clients)
                    rows.append({"via": "HTTP", "mode": mode, "uvicorn_workers": workers, **r})
                    print(rows[-1], flush=True)
            finally:
                serve.terminate()
                serve.wait(30)
        for mode in ("single", "batch"):
            r = python_client(qm, mode, args.batch, args.seconds)
            rows.append({"via": "Python client", "mode": mode, "uvicorn_workers": None, **r})
            print(rows[-1], flush=True)
        qm.close()
    print(f"\n{'via':<15}{'mode':<8}{'workers':>8}{'req/s':>9}{'events/s':>10}"
          f"{'p50 ms':>9}{'p99 ms':>9}")
    for r in rows:
        print(f"{r['via']:<15}{r['mode']:<8}{r['uvicorn_workers'] or '-':>8}"
              f"{r['requests_per_s']:>9,}{r['events_per_s']:>10,}{r['p50_ms']:>9}{r['p99_ms']:>9}")
    print(f"(batch = {args.batch} events per request; {args.clients} HTTP clients, closed loop; "
          "the Python client is one thread)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "http.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
