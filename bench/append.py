"""Append rate of the Python client next to raw XADD on the same Redis, same run.

    python -m bench.append [--events 20000] [--batch 200] [--fsync everysec|always|no]
                           [--partitions 16] [--also-partitions 4] [--rounds 3]

Starts a private redis-server (AOF with the chosen fsync policy), then measures:
raw XADD one by one and pipelined (redis-py, the physical floor for this
client), of a small entry and of an entry shaped like a ledger event, and
ledger appends one by one and batched (``append_batch``: one atomic script call
per partition and chunk of events, pipelined), with the default partition count
(what users run) and again with ``--also-partitions`` (on a second server: a
ledger's partition count is fixed). The pipelined cases run in turn, ``--rounds``
times, so each round's ratios compare runs that shared the machine's load; a
row's rate and ratios are the median round's. Each row also has this process's
and redis-server's CPU per event. Prints a table with ratios and writes JSON to
bench/results/append.json (rows 0-4 as before: raw one by one, raw pipelined,
raw event-shaped, ledger one by one, ledger batched).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import redis

from api.dev.embedded import EmbeddedRedis
from api.dev.loadgen import credit_traffic, registrations, user_ids
from ledger.commands import Command
from ledger.errors import LedgerError
from ledger.tasks import Priority
from streams import QueueManager, StreamsConfig
from streams.config import DEFAULT_PARTITIONS

RESULTS = Path(__file__).parent / "results"


SMALL: dict[Any, Any] = {"k": "credits_used", "u": "user-00001", "v": "7", "a": "-50", "b": "950"}
EVENT: dict[Any, Any] = {
    **SMALL,
    "t": "1790000000000",
    "p": "1000",
    "x": "50",
    "tx": "report",
    "r": "",
    "ph": "8f" * 20,
    "h": "3c" * 20,
    "q": "default",
}
"""An entry shaped like a ledger event: the fields append.lua writes."""


def raw_xadd(client: redis.Redis, n: int, batch: int, fields: dict[Any, Any] = SMALL) -> int:
    if batch <= 1:
        for _ in range(n):
            client.xadd("bench:raw", fields)
        return n
    for i in range(0, n, batch):
        pipe = client.pipeline(transaction=False)
        for _ in range(min(batch, n - i)):
            pipe.xadd("bench:raw", fields)
        pipe.execute()
    return n


def ledger_appends(qm: QueueManager, cmds: list[Command], batch: int) -> int:
    if batch <= 1:
        for cmd in cmds:
            with contextlib.suppress(LedgerError):
                qm.append(cmd)
        return len(cmds)
    for i in range(0, len(cmds), batch):
        qm.append_batch([(c, Priority.NORMAL, None) for c in cmds[i : i + batch]])
    return len(cmds)


def cpu_s(client: redis.Redis) -> float:
    """CPU seconds redis-server has used (``INFO cpu``: user + system)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure(fn: Callable[[], int], server: redis.Redis) -> dict[str, float]:
    """Wall time, this process's CPU and redis-server's CPU of one run of ``fn``
    (which returns the events it did) against ``server``."""
    s0, c0, t0 = cpu_s(server), time.process_time(), time.perf_counter()
    n = fn()
    t1, c1, s1 = time.perf_counter(), time.process_time(), cpu_s(server)
    return {"events": n, "seconds": t1 - t0, "client_cpu_s": c1 - c0, "server_cpu_s": s1 - s0}


Run = dict[str, float]


def row(name: str, runs: list[Run]) -> dict[str, Any]:
    """One table row from one or more rounds: the rate is the median round's."""
    n = sum(r["events"] for r in runs)
    rates = [r["events"] / r["seconds"] for r in runs]
    out: dict[str, Any] = {
        "case": name,
        "events": round(n),
        "seconds": round(sum(r["seconds"] for r in runs), 3),
        "events_per_s": round(statistics.median(rates)),
        "client_cpu_us_per_event": round(sum(r["client_cpu_s"] for r in runs) * 1e6 / n, 1),
        "server_cpu_us_per_event": round(sum(r["server_cpu_s"] for r in runs) * 1e6 / n, 1),
    }
    if len(runs) > 1:
        out["rounds_events_per_s"] = [round(r) for r in rates]
    return out


def ratios(runs: list[Run], base: list[Run]) -> list[float]:
    """Rate over the base case's rate, round by round (each pair measured back to back)."""
    return [
        (r["events"] / r["seconds"]) / (b["events"] / b["seconds"])
        for r, b in zip(runs, base, strict=True)
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--single", type=int, default=5_000, help="events for unbatched runs")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--fsync", default="everysec", choices=["always", "everysec", "no"])
    ap.add_argument(
        "--partitions",
        type=int,
        default=DEFAULT_PARTITIONS,
        help="partitions of the ledger (default: the deployment default, as users run it)",
    )
    ap.add_argument(
        "--also-partitions",
        type=int,
        default=4,
        help="measure the batched append again with this many partitions (0: do not)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="the pipelined cases run in turn this many times, --events split between them",
    )
    args = ap.parse_args(argv)

    counts = [args.partitions, *([args.also_partitions] if args.also_partitions else [])]
    users = user_ids(1000, prefix="bench")
    # top every account up so uses mostly succeed (a realistic accept rate)
    warm = list(credit_traffic(users, args.events + args.single, seed=11))
    cuts = [args.single + args.events * n // args.rounds for n in range(args.rounds + 1)]
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        managers: list[tuple[QueueManager, redis.Redis]] = []
        for count in counts:  # a ledger's partition count is fixed: one server each
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            server = stack.enter_context(EmbeddedRedis(Path(tmp), appendfsync=args.fsync))
            qm = QueueManager(
                config=StreamsConfig(redis_url=server.url, partitions=count),
                client=redis.Redis.from_url(server.url),
            )
            stack.callback(qm.close)
            ledger_appends(qm, registrations(users), args.batch)
            managers.append((qm, redis.Redis.from_url(server.url)))
            stack.callback(managers[-1][1].close)
        qm, client = managers[0]

        rows.append(
            row("raw XADD, one by one", [measure(lambda: raw_xadd(client, args.single, 1), client)])
        )
        piped: list[list[Run]] = [[] for _ in range(2 + len(managers))]
        for n in range(args.rounds):  # in turn: a round's figures share the machine's load
            cmds = warm[cuts[n] : cuts[n + 1]]
            k = len(cmds)
            piped[0].append(measure(partial(raw_xadd, client, k, args.batch), client))
            piped[1].append(measure(partial(raw_xadd, client, k, args.batch, EVENT), client))
            for i, (m, c) in enumerate(managers):
                piped[2 + i].append(measure(partial(ledger_appends, m, cmds, args.batch), c))
        rows.append(row(f"raw XADD, pipelined x{args.batch}", piped[0]))
        rows.append(row(f"raw XADD event-shaped, x{args.batch}", piped[1]))
        single = warm[: args.single]
        rows.append(
            row(
                "ledger append, one by one",
                [measure(lambda: ledger_appends(qm, single, 1), client)],
            )
        )
        for count, runs in zip(counts, piped[2:], strict=True):
            name = f"ledger append_batch x{args.batch}"
            rows.append(
                row(name if count == args.partitions else f"{name}, {count} partitions", runs)
            )
            vs_raw, vs_event = ratios(runs, piped[0]), ratios(runs, piped[1])
            rows[-1]["partitions"] = count
            rows[-1]["ratio_vs_raw"] = round(statistics.median(vs_raw), 3)
            rows[-1]["ratio_vs_event_shaped"] = round(statistics.median(vs_event), 3)
            rows[-1]["rounds_ratio_vs_raw"] = [round(x, 3) for x in vs_raw]
            rows[-1]["rounds_ratio_vs_event_shaped"] = [round(x, 3) for x in vs_event]

    rows[3]["ratio_vs_raw"] = round(rows[3]["events_per_s"] / rows[0]["events_per_s"], 3)
    print(
        f"append rates (redis-server AOF appendfsync={args.fsync}, {args.partitions} partitions; "
        f"pipelined cases: median of {args.rounds} rounds run in turn)"
    )
    print(
        f"{'case':<44}{'events':>8}{'events/s':>11}{'vs raw':>9}{'vs event':>10}"
        f"{'cpu us/event client+server':>29}"
    )
    for r in rows:
        ratio = f"{r['ratio_vs_raw']:.0%}" if "ratio_vs_raw" in r else ""
        event = f"{r['ratio_vs_event_shaped']:.0%}" if "ratio_vs_event_shaped" in r else ""
        cpu = f"{r['client_cpu_us_per_event']:.1f} + {r['server_cpu_us_per_event']:.1f}"
        print(
            f"{r['case']:<44}{r['events']:>8}{r['events_per_s']:>11,}{ratio:>9}{event:>10}{cpu:>29}"
        )
    for r in rows[4:]:
        raw = " ".join(f"{x:.0%}" for x in r["rounds_ratio_vs_raw"])
        event = " ".join(f"{x:.0%}" for x in r["rounds_ratio_vs_event_shaped"])
        print(f"  {r['case']}, round by round: {raw} of raw, {event} of event-shaped")
    target = rows[4]
    met = target["ratio_vs_raw"] >= 0.6 and target["ratio_vs_event_shaped"] >= 0.85
    print(
        "target batched append >= 60% of raw pipelined XADD and >= 85% of event-shaped: "
        f"{target['ratio_vs_raw']:.0%}, {target['ratio_vs_event_shaped']:.0%}, "
        f"{'met' if met else 'missed'}"
    )
    RESULTS.mkdir(exist_ok=True)
    payload = {"fsync": args.fsync, "partitions": args.partitions, "rounds": args.rounds}
    (RESULTS / "append.json").write_text(json.dumps({**payload, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
