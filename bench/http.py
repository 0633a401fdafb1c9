"""HTTP append throughput and latency next to raw XADD and the Python client, same Redis, same run.

    python -m bench.http [--seconds 8] [--workers 1,2] [--batch 100] [--clients 16]
                         [--load 0.5] [--raw-events 20000] [--raw-pipeline 200]

Starts a private redis-server (AOF everysec) and registers the accounts, then:

1. raw XADD: redis-py pipelined XADD (``--raw-pipeline`` per execute,
   ``--raw-events`` entries) to a scratch stream ``bench:raw``, once with an entry
   shaped like a real ledger event (the 13 fields append.lua writes: k u v t a b
   p x tx r ph h q, 40-hex hashes) and once with 5 fields (k u v a b). Measured
   before and after the HTTP runs; the ratios use the mean of the two.
2. for each uvicorn worker count, ``ledger serve`` (rate limit off) and:
   - closed loop (the maximum rate): 2 processes x clients/2 threads, each on its
     own keep-alive connection, posting as fast as answers come back; single
     purchases (``POST /api/accounts/{id}/purchases``), then batches
     (``POST /api/events:batch``, ``--batch`` events each);
   - open loop at fixed offered load (``--load`` x the closed-loop request rate
     just measured): request i is scheduled at ``start + i/rate``; the same
     2 x clients/2 threads take every k-th slot, wait for its time and send it.
     Latency runs from the *scheduled* time, so a request that left late because
     its thread was still busy counts the wait (no coordinated omission). Each
     row also shows how far behind schedule the sends were (late p99 / max) and
     any slot not sent at all by ``seconds + max(2, seconds)``.
3. the same appends directly through the Python client (one thread, closed loop).

Every events/s figure is printed with its ratio to raw pipelined XADD (13 fields,
and 5 fields for transparency). Targets: single-event HTTP p99 < 20 ms at half
the measured maximum rate; HTTP batch >= 25% of raw pipelined XADD events/s.
Writes bench/results/http.json (a list of rows, raw figures included). Everything
runs on this machine's cores: the load generator competes with the server.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import multiprocessing as mp
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from api.dev.deployment import Deployment
from api.dev.embedded import EmbeddedRedis, free_port
from api.dev.loadgen import registrations, user_ids
from bench.common import RESULTS, api_up, pct, wait_until
from ledger.commands import Purchase
from ledger.tasks import Priority
from streams import QueueManager, StreamsConfig

PARTITIONS = 4
USERS = 2000
PROCESSES = 2
SINGLE_P99_TARGET_MS = 20.0
BATCH_RAW_TARGET = 0.25
RAW_STREAM = "bench:raw"
HEADERS = {"Content-Type": "application/json"}


def ms(values: list[float], q: float) -> float:
    v = pct(values, q)
    return round(v * 1000, 2) if v is not None else 0.0


def latency_row(lat: list[float]) -> dict[str, Any]:
    return {
        "p50_ms": ms(lat, 0.50),
        "p99_ms": ms(lat, 0.99),
        "p999_ms": ms(lat, 0.999),
        "max_ms": round(max(lat) * 1000, 2) if lat else 0.0,
        "samples": len(lat),
    }


def request_for(mode: str, batch: int, tag: str, i: int) -> tuple[str, str]:
    """(path, JSON body) of request ``i`` of a load-generator thread."""
    if mode == "single":
        user = f"bench-{(hash(tag) + i) % USERS:05d}"
        return (
            f"/api/accounts/{user}/purchases",
            json.dumps({"amount": 5, "currency": "USD", "transaction_id": f"{tag}-{i}"}),
        )
    return (
        "/api/events:batch",
        json.dumps(
            {
                "events": [
                    {
                        "kind": "purchase",
                        "user_id": f"bench-{(i * batch + j) % USERS:05d}",
                        "amount": 5,
                        "currency": "USD",
                        "transaction_id": f"{tag}-{i}-{j}",
                    }
                    for j in range(batch)
                ]
            }
        ),
    )


def post(conn: http.client.HTTPConnection, path: str, body: str) -> bool:
    conn.request("POST", path, body, HEADERS)
    response = conn.getresponse()
    response.read()
    return response.status in (200, 201)


# -- closed loop: as fast as the answers come back ----------------------------------------
@dataclass
class Tally:
    lat: list[float] = field(default_factory=list)  # closed: send->answer; open: scheduled->answer
    late: list[float] = field(default_factory=list)  # open loop: actual send - scheduled
    ok: int = 0
    errors: int = 0
    unsent: int = 0
    last_done: float = 0.0


def _post_counted(conn: http.client.HTTPConnection, path: str, body: str, tally: Tally) -> None:
    """One POST, counted as ok or as an error (a broken connection is reopened)."""
    try:
        good = post(conn, path, body)
    except (OSError, http.client.HTTPException):
        good = False
        conn.close()
    if good:
        tally.ok += 1
    else:
        tally.errors += 1


def _closed_thread(
    port: int, mode: str, batch: int, seconds: float, tag: str, tally: Tally
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        i += 1
        path, body = request_for(mode, batch, tag, i)
        t0 = time.monotonic()
        _post_counted(conn, path, body, tally)
        tally.lat.append(time.monotonic() - t0)
    conn.close()


def _closed_process(
    port: int, mode: str, batch: int, seconds: float, threads: int, seed: int, queue: Any
) -> None:
    tallies = [Tally() for _ in range(threads)]
    pool = [
        threading.Thread(
            target=_closed_thread,
            args=(port, mode, batch, seconds, f"{mode}{seed}t{t}{time.time_ns()}", tallies[t]),
        )
        for t in range(threads)
    ]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    queue.put(
        (
            [x for tl in tallies for x in tl.lat],
            sum(tl.ok for tl in tallies),
            sum(tl.errors for tl in tallies),
        )
    )


def closed_loop(port: int, mode: str, batch: int, seconds: float, clients: int) -> dict[str, Any]:
    queue: Any = mp.Queue()
    procs = [
        mp.Process(
            target=_closed_process,
            args=(port, mode, batch, seconds, max(1, clients // PROCESSES), i, queue),
        )
        for i in range(PROCESSES)
    ]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.monotonic() - t0
    lat = [x for r in results for x in r[0]]
    requests = sum(r[1] for r in results)
    per = batch if mode == "batch" else 1
    return {
        "load": "closed",
        "offered_rps": None,
        "requests_per_s": round(requests / elapsed),
        "events_per_s": round(requests * per / elapsed),
        **latency_row(lat),
        "late_p99_ms": None,
        "late_max_ms": None,
        "requests": requests,
        "errors": sum(r[2] for r in results),
        "unsent": 0,
    }


# -- open loop: fixed offered load, latency from the scheduled time ----------------------
def _open_thread(
    conn: http.client.HTTPConnection,
    mode: str,
    batch: int,
    rate: float,
    start: float,
    slots: int,
    stride: int,
    offset: int,
    stop_at: float,
    tag: str,
    tally: Tally,
) -> None:
    for i in range(offset, slots, stride):
        path, body = request_for(mode, batch, tag, i)
        scheduled = start + i / rate
        now = time.monotonic()
        if now < scheduled:
            time.sleep(scheduled - now)
        elif now > stop_at:
            tally.unsent += len(range(i, slots, stride))
            break
        sent = time.monotonic()
        _post_counted(conn, path, body, tally)
        done = time.monotonic()
        tally.lat.append(done - scheduled)
        tally.late.append(sent - scheduled)
        tally.last_done = done
    conn.close()


def _open_process(
    port: int,
    mode: str,
    batch: int,
    rate: float,
    seconds: float,
    threads: int,
    index: int,
    ready: Any,
    go: Any,
    start_at: Any,
    queue: Any,
) -> None:
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(threads)]
    for c in conns:
        c.connect()
    ready.put(index)
    go.wait()
    start = float(start_at.value)
    slots = int(rate * seconds)
    stride = PROCESSES * threads
    stop_at = start + seconds + max(2.0, seconds)
    tallies = [Tally() for _ in range(threads)]
    tag = f"open-{mode}{index}-{time.time_ns()}"
    pool = [
        threading.Thread(
            target=_open_thread,
            args=(
                conns[t],
                mode,
                batch,
                rate,
                start,
                slots,
                stride,
                index * threads + t,
                stop_at,
                f"{tag}t{t}",
                tallies[t],
            ),
        )
        for t in range(threads)
    ]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    queue.put(
        (
            [x for tl in tallies for x in tl.lat],
            [x for tl in tallies for x in tl.late],
            sum(tl.ok for tl in tallies),
            sum(tl.errors for tl in tallies),
            sum(tl.unsent for tl in tallies),
            max(tl.last_done for tl in tallies),
        )
    )


def open_loop(
    port: int, mode: str, batch: int, rate: float, seconds: float, clients: int
) -> dict[str, Any]:
    """``rate`` requests/s offered for ``seconds``, spread over 2 processes x threads."""
    threads = max(1, clients // PROCESSES)
    ready: Any = mp.Queue()
    queue: Any = mp.Queue()
    go = mp.Event()
    start_at: Any = mp.Value("d", 0.0)
    procs = [
        mp.Process(
            target=_open_process,
            args=(port, mode, batch, rate, seconds, threads, i, ready, go, start_at, queue),
        )
        for i in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=30)
    start = time.monotonic() + 0.2
    start_at.value = start  # time.monotonic is CLOCK_MONOTONIC: one clock for every process
    go.set()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    lat = [x for r in results for x in r[0]]
    late = [x for r in results for x in r[1]]
    ok, errors, unsent = (sum(r[k] for r in results) for k in (2, 3, 4))
    elapsed = max(r[5] for r in results) - start
    per = batch if mode == "batch" else 1
    done = ok + errors
    return {
        "load": "open",
        "offered_rps": round(rate, 1),
        "requests_per_s": round(ok / elapsed) if elapsed > 0 else 0,
        "events_per_s": round(ok * per / elapsed) if elapsed > 0 else 0,
        **latency_row(lat),
        "late_p99_ms": ms(late, 0.99),
        "late_max_ms": round(max(late) * 1000, 2) if late else 0.0,
        "requests": done,
        "errors": errors,
        "unsent": unsent,
    }


# -- the Python client, and raw XADD -----------------------------------------------------
def python_client(qm: QueueManager, mode: str, batch: int, seconds: float) -> dict[str, Any]:
    lat: list[float] = []
    n = 0
    deadline = time.monotonic() + seconds
    t_start = time.monotonic()
    while time.monotonic() < deadline:
        size = 1 if mode == "single" else batch
        items = [
            (
                Purchase(
                    user_id=f"bench-{(n + j) % USERS:05d}",
                    amount=5,
                    currency="USD",
                    transaction_id=f"py-{mode}-{n}-{j}",
                ),
                Priority.NORMAL,
                None,
            )
            for j in range(size)
        ]
        t0 = time.monotonic()
        qm.append_batch(items)
        lat.append(time.monotonic() - t0)
        n += size
    elapsed = time.monotonic() - t_start
    return {
        "load": "closed",
        "offered_rps": None,
        "requests_per_s": round(len(lat) / elapsed),
        "events_per_s": round(n / elapsed),
        **latency_row(lat),
        "late_p99_ms": None,
        "late_max_ms": None,
        "requests": len(lat),
        "errors": 0,
        "unsent": 0,
    }


def raw_entries(n: int) -> list[dict[str, str]]:
    """Stream entries shaped like the credits_purchased events append.lua writes."""
    now = int(time.time() * 1000)
    out = []
    for i in range(n):
        user = f"bench-{i % USERS:05d}"
        v = 2 + i // USERS  # version 1 is the registration
        bought = 5 * (v - 1)
        out.append(
            {
                "k": "credits_purchased",
                "u": user,
                "v": str(v),
                "t": str(now + i),
                "a": "5",
                "b": str(bought),
                "p": str(bought),
                "x": "0",
                "tx": "USD",
                "r": f"raw-{i:08d}",
                "ph": hashlib.sha1(f"{user}:{v - 1}".encode()).hexdigest(),
                "h": hashlib.sha1(f"{user}:{v}".encode()).hexdigest(),
                "q": "default",
            }
        )
    return out


def raw_xadd(client: redis.Redis, entries: list[dict[str, str]], pipeline: int) -> float:
    """Events/s of pipelined XADD of ``entries`` to the scratch stream (deleted after)."""
    client.delete(RAW_STREAM)
    t0 = time.perf_counter()
    for i in range(0, len(entries), pipeline):
        pipe = client.pipeline(transaction=False)
        for e in entries[i : i + pipeline]:
            pipe.xadd(RAW_STREAM, e)  # type: ignore[arg-type]
        pipe.execute()
    secs = time.perf_counter() - t0
    client.delete(RAW_STREAM)
    return len(entries) / secs


def raw_pair(client: redis.Redis, n: int, pipeline: int) -> tuple[float, float]:
    full = raw_entries(n)
    five = [{k: e[k] for k in ("k", "u", "v", "a", "b")} for e in full]
    raw_xadd(client, full[: min(n, 2000)], pipeline)  # warm-up
    return raw_xadd(client, full, pipeline), raw_xadd(client, five, pipeline)


def wait_healthy(port: int, timeout: float = 30.0) -> None:
    if not wait_until(lambda: api_up(port), timeout, 0.2):
        raise TimeoutError(f"ledger serve on :{port} not healthy after {timeout:g} s")


def _fmt(v: Any, spec: str = "") -> str:
    return "-" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each run")
    ap.add_argument("--workers", default="1,2", help="uvicorn worker counts, comma separated")
    ap.add_argument("--batch", type=int, default=100, help="events per batch request")
    ap.add_argument(
        "--clients", type=int, default=16, help="HTTP connections (2 processes x clients/2 threads)"
    )
    ap.add_argument(
        "--load",
        type=float,
        default=0.5,
        help="open-loop offered load, as a fraction of the closed-loop max",
    )
    ap.add_argument("--raw-events", type=int, default=20_000)
    ap.add_argument("--raw-pipeline", type=int, default=200)
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []

    def show(r: dict[str, Any]) -> None:
        rows.append(r)
        print({k: v for k, v in r.items() if v is not None}, flush=True)

    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp)) as server:
        client = redis.Redis.from_url(server.url)
        qm = QueueManager(
            config=StreamsConfig(redis_url=server.url, partitions=PARTITIONS), client=client
        )
        qm.append_batch(
            [(c, Priority.NORMAL, None) for c in registrations(user_ids(USERS, prefix="bench"))]
        )
        raw_before = raw_pair(client, args.raw_events, args.raw_pipeline)
        print(
            f"raw XADD pipelined x{args.raw_pipeline} (before): 13 fields "
            f"{raw_before[0]:,.0f}/s, 5 fields {raw_before[1]:,.0f}/s",
            flush=True,
        )
        for workers in (int(w) for w in args.workers.split(",")):
            port = free_port()
            with Deployment(server.url, partitions=PARTITIONS, log_level="WARNING") as deployment:
                deployment.start(
                    "api",
                    "serve",
                    "--port",
                    str(port),
                    "--workers",
                    str(workers),
                    "--rate-per-s",
                    "0",
                )
                wait_healthy(port)
                for mode in ("single", "batch"):
                    top = closed_loop(port, mode, args.batch, args.seconds, args.clients)
                    show({"via": "HTTP", "mode": mode, "uvicorn_workers": workers, **top})
                    rate = max(1.0, args.load * top["requests_per_s"])
                    r = open_loop(port, mode, args.batch, rate, args.seconds, args.clients)
                    show(
                        {
                            "via": "HTTP",
                            "mode": f"{mode}, open loop",
                            "uvicorn_workers": workers,
                            **r,
                        }
                    )
        for mode in ("single", "batch"):
            r = python_client(qm, mode, args.batch, args.seconds)
            show({"via": "Python client", "mode": mode, "uvicorn_workers": None, **r})
        raw_after = raw_pair(client, args.raw_events, args.raw_pipeline)
        print(
            f"raw XADD pipelined x{args.raw_pipeline} (after): 13 fields "
            f"{raw_after[0]:,.0f}/s, 5 fields {raw_after[1]:,.0f}/s",
            flush=True,
        )
        qm.close()

    raw13 = (raw_before[0] + raw_after[0]) / 2
    raw5 = (raw_before[1] + raw_after[1]) / 2
    for r in rows:
        r["vs_raw_xadd"] = round(r["events_per_s"] / raw13, 4)
        r["vs_raw_xadd_5_fields"] = round(r["events_per_s"] / raw5, 4)
        if r["via"] == "HTTP" and r["mode"] == "single, open loop":
            r["target"] = f"p99 < {SINGLE_P99_TARGET_MS:g} ms"
            r["met"] = r["p99_ms"] < SINGLE_P99_TARGET_MS and not r["unsent"] and not r["errors"]
        if r["via"] == "HTTP" and r["mode"] == "batch":
            r["target"] = f">= {BATCH_RAW_TARGET:.0%} of raw pipelined XADD events/s"
            r["met"] = r["vs_raw_xadd"] >= BATCH_RAW_TARGET
    for label, pair in (("before", raw_before), ("after", raw_after), ("mean", (raw13, raw5))):
        for fields, value in (
            ("13 fields (ledger event shape)", pair[0]),
            ("5 fields (k u v a b)", pair[1]),
        ):
            rows.append(
                {
                    "via": "raw XADD",
                    "mode": f"pipelined x{args.raw_pipeline}, {fields}",
                    "measured": label,
                    "uvicorn_workers": None,
                    "events": args.raw_events,
                    "events_per_s": round(value),
                }
            )

    head = (
        f"{'via':<14}{'mode':<20}{'wk':>3}{'offered':>9}{'req/s':>8}{'events/s':>10}"
        f"{'vs raw':>8}{'vs raw5':>8}{'p50 ms':>8}{'p99 ms':>8}{'p999 ms':>9}"
        f"{'late p99':>9}{'late max':>9}{'n':>7}{'err':>5}{'unsent':>7}"
    )
    print(
        f"\nHTTP and Python-client appends (batch = {args.batch} events/request; "
        f"{args.clients} HTTP connections over {PROCESSES} processes; open loop at "
        f"{args.load:g} x the closed-loop req/s; {args.seconds:g} s each)"
    )
    print(head)
    for r in rows:
        if r["via"] == "raw XADD":
            continue
        print(
            f"{r['via']:<14}{r['mode']:<20}{_fmt(r['uvicorn_workers']):>3}"
            f"{_fmt(r['offered_rps'], ',.0f'):>9}{r['requests_per_s']:>8,}"
            f"{r['events_per_s']:>10,}{r['vs_raw_xadd']:>8.1%}{r['vs_raw_xadd_5_fields']:>8.1%}"
            f"{r['p50_ms']:>8}{r['p99_ms']:>8}{r['p999_ms']:>9}{_fmt(r['late_p99_ms']):>9}"
            f"{_fmt(r['late_max_ms']):>9}{r['samples']:>7}{r['errors']:>5}{r['unsent']:>7}"
        )
    print(
        f"raw XADD pipelined x{args.raw_pipeline}, {args.raw_events:,} entries, same Redis: "
        f"13 fields {raw13:,.0f}/s (before {raw_before[0]:,.0f}, after {raw_after[0]:,.0f}); "
        f"5 fields {raw5:,.0f}/s (before {raw_before[1]:,.0f}, after {raw_after[1]:,.0f})"
    )
    print(
        "closed-loop p50/p99/p999: send -> answer; open-loop: scheduled send -> answer "
        "(late = actual send - scheduled); 'vs raw' = events/s / raw 13-field XADD"
    )
    print("targets:")
    for r in rows:
        if "met" not in r:
            continue
        if r["mode"] == "single, open loop":
            print(
                f"  single HTTP p99 {r['p99_ms']} ms at {r['offered_rps']:,.0f} req/s offered "
                f"({args.load:g} x max), {r['uvicorn_workers']} worker(s): "
                f"< {SINGLE_P99_TARGET_MS:g} ms {'MET' if r['met'] else 'NOT MET'}"
                + (
                    f" ({r['unsent']} unsent, {r['errors']} errors)"
                    if r["unsent"] or r["errors"]
                    else ""
                )
            )
        else:
            print(
                f"  batch HTTP {r['events_per_s']:,} events/s, {r['uvicorn_workers']} "
                f"worker(s) = {r['vs_raw_xadd']:.1%} of raw pipelined XADD: "
                f">= {BATCH_RAW_TARGET:.0%} {'MET' if r['met'] else 'NOT MET'}"
            )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "http.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
