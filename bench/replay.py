"""Replay rate: rebuild the balances and credit_scores read models from a log of
--events events (default 100,000), read from the Redis streams.

    python -m bench.replay [--events 100000] [--users 5000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import redis

from api.dev.embedded import EmbeddedMongo, EmbeddedRedis
from api.dev.loadgen import credit_traffic, registrations, user_ids
from ledger.tasks import Priority
from projections.replay import replay
from projections.store import BALANCES, CREDIT_SCORES, connect
from streams import QueueManager, StreamsConfig
from tests.streamlog import iter_entries

RESULTS = Path(__file__).parent / "results"
PARTITIONS = 4


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=5_000)
    args = ap.parse_args(argv)
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
        sent = 0
        while sum(1 for _ in iter_entries(client, PARTITIONS)) < args.events:
            cmds = list(credit_traffic(users, 20_000, seed=sent))
            for i in range(0, len(cmds), 500):
                qm.append_batch([(c, Priority.NORMAL, None) for c in cmds[i : i + 500]])
            sent += len(cmds)
        n = sum(1 for _ in iter_entries(client, PARTITIONS))
        mongo = connect(ms.url)
        t0 = time.perf_counter()
        result = replay(client, PARTITIONS, mongo.ledger, only=(BALANCES, CREDIT_SCORES))
        secs = time.perf_counter() - t0
        print(result.summary())
        print(
            f"replayed {n} events of {args.users} accounts into balances and credit_scores "
            f"in {secs:.1f} s: {n / secs:,.0f} events/s"
        )
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "replay.json").write_text(
            json.dumps(
                {
                    "events": n,
                    "accounts": args.users,
                    "seconds": round(secs, 2),
                    "events_per_s": round(n / secs),
                },
                indent=2,
            )
        )
        mongo.close()
        qm.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
