"""Credit holds: hold + capture rate next to purchase + use, and a mass expiry.

    python -m bench.holds [--pairs 20000] [--batch 200] [--users 1000] [--rounds 3]
                          [--expire 10000] [--fsync everysec|always|no] [--partitions 16]

Starts a private redis-server (AOF with the chosen fsync policy) and measures,
with the Python client batched (``append_batch``: one atomic script call per
partition and chunk, pipelined):

- purchase + use pairs, and hold + capture pairs (a hold, then a capture of part
  of it in the same batch: the rest is released by the capture's event), in
  turn, ``--rounds`` times, so each round's ratio compares runs that shared the
  machine's load; a row's rate is the median round's;
- expiry: ``--expire`` holds (10 per account) made to expire at the same
  moment, then one ``ledger scheduler`` sweep (``Scheduler.expire_holds``, as
  the scheduler's loop runs it): the time from their deadline until every one
  is released (each an event in its account's chain), and the events per second.

Prints a table and writes JSON to bench/results/holds.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import redis

from api.dev.embedded import EmbeddedRedis
from api.dev.loadgen import registrations, user_ids
from ledger.commands import Capture, Command, Hold, Purchase, Use
from ledger.errors import LedgerError
from ledger.tasks import Priority
from streams import QueueManager, StreamsConfig
from streams.config import DEFAULT_PARTITIONS
from streams.holds import pending_holds
from streams.scheduler import Scheduler

from .append import Run, cpu_s, measure, row

RESULTS = Path(__file__).parent / "results"


def batched(qm: QueueManager, cmds: list[Command], batch: int) -> int:
    """Append ``cmds`` in batches; returns the events appended (refusals raise)."""
    refused: Counter[str] = Counter()
    for i in range(0, len(cmds), batch):
        for result in qm.append_batch([(c, Priority.NORMAL, None) for c in cmds[i : i + batch]]):
            if isinstance(result, LedgerError):
                refused[result.code] += 1
    if refused:
        raise SystemExit(f"refused appends in the benchmark: {dict(refused)}")
    return len(cmds)


class Pairs:
    """Purchase+use and hold+capture pairs over ``users`` (hold ids predicted: the
    accounts are funded well enough that no hold is refused)."""

    def __init__(self, users: list[str]) -> None:
        self.users = users
        self.made: Counter[str] = Counter()
        self.tx = 0

    def spends(self, n: int, offset: int) -> list[Command]:
        out: list[Command] = []
        for i in range(n):
            user = self.users[(offset + i) % len(self.users)]
            self.tx += 1
            out.append(Purchase(user_id=user, amount=50, transaction_id=f"b-{self.tx}"))
            out.append(Use(user_id=user, amount=40, reason="api-call"))
        return out

    def holds(self, n: int, offset: int) -> list[Command]:
        out: list[Command] = []
        for i in range(n):
            user = self.users[(offset + i) % len(self.users)]
            self.made[user] += 1
            out.append(Hold(user_id=user, amount=50, reason="job", expires_in_s=600))
            out.append(Capture(user_id=user, hold_id=f"{user}:h{self.made[user]}", amount=40))
        return out


def expiry(qm: QueueManager, users: list[str], count: int, batch: int) -> dict[str, Any]:
    """``count`` holds due at one moment, then one scheduler's sweep until all are released."""
    per_user = max(1, count // len(users))
    cmds: list[Command] = []
    for i in range(min(count, per_user * len(users))):
        user = users[i % len(users)]
        cmds.append(Hold(user_id=user, amount=1, reason="expiring", expires_in_s=2))
    t0 = time.time()
    batched(qm, cmds, batch)
    made_s = time.time() - t0
    if made_s > 1.5:
        raise SystemExit(f"making {count} holds took {made_s:.1f} s: they are not due at once")
    before = pending_holds(qm.redis, qm.config.partitions)
    time.sleep(max(0.0, t0 + 2.05 - time.time()))  # every hold is due now
    scheduler = Scheduler(qm.redis, qm.config.partitions, config=qm.config, batch=1000)
    server = redis.Redis.from_url(qm.config.redis_url)
    s0, c0, t1 = cpu_s(server), time.process_time(), time.perf_counter()
    released = 0
    while pending_holds(qm.redis, qm.config.partitions):
        released += scheduler.expire_holds()
    seconds = time.perf_counter() - t1
    c1, s1 = time.process_time(), cpu_s(server)
    server.close()
    return {
        "holds": before,
        "released": released,
        "seconds_to_release_all": round(seconds, 3),
        "since_deadline_s": round(time.time() - (t0 + 2.0), 3),
        "released_per_s": round(released / seconds) if seconds else None,
        "client_cpu_us_per_event": round((c1 - c0) * 1e6 / max(released, 1), 1),
        "server_cpu_us_per_event": round((s1 - s0) * 1e6 / max(released, 1), 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=20_000, help="pairs per case, over all rounds")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--expire", type=int, default=10_000, help="holds due at once (0: skip)")
    ap.add_argument("--fsync", default="everysec", choices=["always", "everysec", "no"])
    ap.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS)
    args = ap.parse_args(argv)

    users = user_ids(args.users, prefix="hold")
    per_round = args.pairs // args.rounds
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        server = stack.enter_context(EmbeddedRedis(Path(tmp), appendfsync=args.fsync))
        qm = QueueManager(
            config=StreamsConfig(redis_url=server.url, partitions=args.partitions),
            client=redis.Redis.from_url(server.url),
        )
        stack.callback(qm.close)
        client = redis.Redis.from_url(server.url)
        stack.callback(client.close)
        batched(qm, registrations(users), args.batch)
        batched(
            qm,
            [Purchase(user_id=u, amount=10**9, transaction_id=f"fund-{u}") for u in users],
            args.batch,
        )
        gen = Pairs(users)
        spends: list[Run] = []
        holds: list[Run] = []
        for n in range(args.rounds):  # in turn: a round's figures share the machine's load
            a = gen.spends(per_round, n * per_round)
            b = gen.holds(per_round, n * per_round)
            spends.append(measure(partial(batched, qm, a, args.batch), client))
            holds.append(measure(partial(batched, qm, b, args.batch), client))
        rows = [
            row(f"purchase + use, append_batch x{args.batch}", spends),
            row(f"hold + capture, append_batch x{args.batch}", holds),
        ]
        ratio = [
            (h["events"] / h["seconds"]) / (s["events"] / s["seconds"])
            for h, s in zip(holds, spends, strict=True)
        ]
        rows[1]["ratio_vs_purchase_use"] = round(statistics.median(ratio), 3)
        rows[1]["rounds_ratio_vs_purchase_use"] = [round(x, 3) for x in ratio]
        for r in rows:
            r["pairs_per_s"] = r["events_per_s"] // 2
        expired = expiry(qm, users, args.expire, args.batch) if args.expire else None

    print(
        f"credit holds (redis-server AOF appendfsync={args.fsync}, {args.partitions} partitions, "
        f"{args.users} accounts; median of {args.rounds} rounds run in turn)"
    )
    print(f"{'case':<40}{'events':>8}{'events/s':>11}{'pairs/s':>10}{'cpu us/event c+s':>19}")
    for r in rows:
        cpu = f"{r['client_cpu_us_per_event']:.1f} + {r['server_cpu_us_per_event']:.1f}"
        print(
            f"{r['case']:<40}{r['events']:>8}{r['events_per_s']:>11,}{r['pairs_per_s']:>10,}"
            f"{cpu:>19}"
        )
    print(
        f"hold + capture vs purchase + use: {rows[1]['ratio_vs_purchase_use']:.0%} "
        f"(rounds: {' '.join(f'{x:.0%}' for x in rows[1]['rounds_ratio_vs_purchase_use'])})"
    )
    if expired:
        print(
            f"expiry: {expired['holds']} holds due at once, all released by one scheduler in "
            f"{expired['seconds_to_release_all']:.2f} s ({expired['released_per_s']:,} "
            f"expiries/s; {expired['since_deadline_s']:.2f} s after the deadline; cpu/event "
            f"{expired['client_cpu_us_per_event']} + {expired['server_cpu_us_per_event']} us)"
        )
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "fsync": args.fsync,
        "partitions": args.partitions,
        "users": args.users,
        "rounds": args.rounds,
        "rows": rows,
        "expiry": expired,
    }
    (RESULTS / "holds.json").write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
