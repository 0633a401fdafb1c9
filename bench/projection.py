"""Projection rate next to the Mongo-wire server's raw bulk-upsert rate, same run.

    python -m bench.projection [--events 20000] [--users 1000] [--batch 500]

Starts private redis-server and Mongo-wire servers, appends synthetic traffic,
then measures on fresh databases:
  raw        bulk UpdateOne upserts, one per document (the server's floor)
  balances   the balances projector without coalescing (one write per event)
  balances   with coalescing (one write per account per batch)
  all three  balances + credit_scores + events archive, as `ledger project` runs them
Prints events/s and writes bench/results/projection.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from pymongo import UpdateOne

from api.dev.embedded import EmbeddedMongo, EmbeddedRedis
from api.dev.loadgen import credit_traffic, registrations, user_ids
from ledger.tasks import Priority
from projections.balances import Balances
from projections.runner import all_projections, projector
from projections.store import connect
from streams import QueueManager, StreamsConfig, keys
from tests.streamlog import iter_entries

RESULTS = Path(__file__).parent / "results"
PARTITIONS = 4


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=1_000)
    ap.add_argument("--batch", type=int, default=2000)
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []

    def row(case: str, n: int, secs: float, **extra: Any) -> None:
        rows.append(
            {
                "case": case,
                "events": n,
                "seconds": round(secs, 2),
                "events_per_s": round(n / secs),
                **extra,
            }
        )
        print(f"{case:<50}{n:>8}{n / secs:>10,.0f}/s", flush=True)

    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedRedis(Path(tmp) / "r") as rs,
        EmbeddedMongo(Path(tmp) / "m") as ms,
    ):
        client = redis.Redis.from_url(rs.url)
        qm = QueueManager(
            config=StreamsConfig(redis_url=rs.url, partitions=PARTITIONS), client=client
        )
        users = user_ids(args.users, prefix="bench")
        qm.append_batch([(c, Priority.NORMAL, None) for c in registrations(users)])
        cmds = list(credit_traffic(users, args.events, seed=3))
        for i in range(0, len(cmds), 500):
            qm.append_batch([(c, Priority.NORMAL, None) for c in cmds[i : i + 500]])
        n_events = sum(1 for _ in iter_entries(client, PARTITIONS))
        print(
            f"log: {n_events} events over {args.users} accounts; batches of {args.batch} entries\n"
        )
        mongo = connect(ms.url)

        raw = mongo.bench_raw.docs
        t0 = time.perf_counter()
        for i in range(0, n_events, args.batch):
            raw.bulk_write(
                [
                    UpdateOne({"_id": f"d{j}"}, {"$set": {"v": j, "b": j * 3}}, upsert=True)
                    for j in range(i, min(n_events, i + args.batch))
                ],
                ordered=False,
            )
        row("raw bulk upsert, one per document", n_events, time.perf_counter() - t0)

        for name, projection in (
            ("balances, no coalescing", Balances(coalescing=False)),
            ("balances, coalescing", Balances()),
        ):
            db = mongo[f"bench_{name.split(',')[1].strip().replace(' ', '_')}"]
            worker = projector(client, PARTITIONS, db, projection, batch=args.batch)
            group = f"proj:{projection.name}"
            t0 = time.perf_counter()
            worker.run_until_idle(timeout=3600)
            row(
                f"projector {name}",
                n_events,
                time.perf_counter() - t0,
                writes=db.balances.count_documents({}),
            )
            for p in keys.partitions(PARTITIONS):  # let the next run read the log again
                for key in client.scan_iter(f"{keys.tag(p)}:*"):
                    if client.type(key) == b"stream":
                        client.xgroup_destroy(key, group)

        db = mongo.bench_all
        t0 = time.perf_counter()
        for each in all_projections():
            projector(client, PARTITIONS, db, each, batch=args.batch).run_until_idle(3600)
        row("all three projectors (balances, scores, archive)", n_events, time.perf_counter() - t0)
        mongo.close()
        client.close()

    base = rows[0]["events_per_s"]
    for r in rows[1:]:
        r["ratio_vs_raw"] = round(r["events_per_s"] / base, 2)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "projection.json").write_text(json.dumps(rows, indent=2))
    print(
        "\nratios vs raw bulk upsert: "
        + ", ".join(f"{r['case']}: {r['ratio_vs_raw']}x" for r in rows[1:])
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
