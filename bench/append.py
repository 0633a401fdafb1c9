"""Append rate of the Python client next to raw XADD on the same Redis, same run.

    python -m bench.append [--events 20000] [--batch 200] [--fsync everysec|always|no]

Starts a private redis-server (AOF with the chosen fsync policy), then measures:
raw XADD one by one and pipelined (redis-py, the physical floor for this
client), and ledger appends one by one and batched (``append_batch``: one atomic
script call per event, pipelined). Prints a table with ratios and writes JSON to
bench/results/append.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from api.dev.embedded import EmbeddedRedis
from api.dev.loadgen import credit_traffic, registrations, user_ids
from ledger.commands import Command
from ledger.errors import LedgerError
from ledger.tasks import Priority
from streams import QueueManager, StreamsConfig

RESULTS = Path(__file__).parent / "results"


def timed(fn: Callable[[], int]) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t0


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--single", type=int, default=5_000, help="events for unbatched runs")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--fsync", default="everysec", choices=["always", "everysec", "no"])
    args = ap.parse_args(argv)

    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedRedis(Path(tmp), appendfsync=args.fsync) as server,
    ):
        client = redis.Redis.from_url(server.url)
        qm = QueueManager(
            config=StreamsConfig(redis_url=server.url, partitions=4),
            client=redis.Redis.from_url(server.url),
        )
        users = user_ids(1000, prefix="bench")
        ledger_appends(qm, registrations(users), args.batch)
        # top every account up so uses mostly succeed (a realistic accept rate)
        warm = [c for c in credit_traffic(users, args.events + args.single, seed=11)]

        def row(name: str, n: int, secs: float) -> None:
            rows.append(
                {
                    "case": name,
                    "events": n,
                    "seconds": round(secs, 3),
                    "events_per_s": round(n / secs),
                }
            )

        row("raw XADD, one by one", *timed(lambda: raw_xadd(client, args.single, 1)))
        row(
            f"raw XADD, pipelined x{args.batch}",
            *timed(lambda: raw_xadd(client, args.events, args.batch)),
        )
        row(
            f"raw XADD event-shaped, x{args.batch}",
            *timed(lambda: raw_xadd(client, args.events, args.batch, EVENT)),
        )
        row("ledger append, one by one", *timed(lambda: ledger_appends(qm, warm[: args.single], 1)))
        row(
            f"ledger append_batch x{args.batch}",
            *timed(lambda: ledger_appends(qm, warm[args.single :], args.batch)),
        )
        qm.close()
        client.close()

    raw_single, raw_piped, raw_event = (r["events_per_s"] for r in rows[:3])
    rows[3]["ratio_vs_raw"] = round(rows[3]["events_per_s"] / raw_single, 3)
    rows[4]["ratio_vs_raw"] = round(rows[4]["events_per_s"] / raw_piped, 3)
    rows[4]["ratio_vs_event_shaped"] = round(rows[4]["events_per_s"] / raw_event, 3)
    print(f"append rates (redis-server AOF appendfsync={args.fsync}, 4 partitions)")
    print(f"{'case':<34}{'events':>8}{'events/s':>11}{'vs raw':>9}{'vs event':>10}")
    for r in rows:
        ratio = f"{r['ratio_vs_raw']:.0%}" if "ratio_vs_raw" in r else ""
        event = f"{r['ratio_vs_event_shaped']:.0%}" if "ratio_vs_event_shaped" in r else ""
        print(f"{r['case']:<34}{r['events']:>8}{r['events_per_s']:>11,}{ratio:>9}{event:>10}")
    met = rows[4]["ratio_vs_raw"] >= 0.5
    print(
        f"target batched append >= 50% of raw pipelined XADD: {rows[4]['ratio_vs_raw']:.0%}, "
        f"{'met' if met else 'missed'}"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "append.json").write_text(json.dumps({"fsync": args.fsync, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
