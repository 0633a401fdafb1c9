"""The peers' workload as a batch handler, against Dramatiq's single tasks, same run.

    python -m bench.batch [--tasks 20000] [--processes 2] [--threads 8] [--concurrency N]
                          [--partitions N] [--max-batch 100]

Workload (``bench.peers``): per task, one HINCRBY of ``amount`` into a per-user
hash, on one private redis-server (ledger on DB 0, Dramatiq's broker on DB 1).

  dramatiq  the ``bench.peer_dramatiq`` actor, one task per message, drained by
            ``dramatiq bench.peer_dramatiq --processes N --threads T``
            (``bench.peers.drain``: tasks enqueued one by one first)
  ledger    task type ``hincr_batch``, registered by this module as a batch
            handler (``register_batch``): one pipelined HINCRBY round trip per
            call, whatever its size; drained by ``ledger worker --import bench.batch``
            x N (tasks enqueued with ``enqueue_many`` first)

Drain rate: tasks/s from the first completed task until every user's sum equals
what was enqueued (checked per user). A worker round reads at most
``WorkerConfig.batch`` (128) entries, so a call gets at most that many whatever
``--max-batch`` says; the calls' sizes are counted (``bench:batch:sizes``).
Prints both rates and their ratio (target >= 10x) with the machine's facts;
writes bench/results/batch.json.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from api.dev.embedded import EmbeddedRedis
from bench.common import facts, print_facts, write
from bench.peer_handlers import mark_done
from bench.peers import System, drain, peer_arguments
from ledger.tasks import Priority
from streams import BatchDBManager, QueueManager, StreamsConfig, default_registry

TASK_TYPE = "hincr_batch"
SUM_KEY = "bench:sum:ledger-batch"
SIZES_KEY = "bench:batch:sizes"
"""A hash: call size -> number of calls of that size."""
DEFAULT_MAX_BATCH = 100

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _client


def hincr_batch(items: list[Mapping[str, Any]], db_manager: BatchDBManager) -> list[bool]:
    """The peers' HINCRBY for every item (and a tagged item's done time, as
    ``bench.peer_handlers.record``), and the call's size, in one round trip."""
    key = os.environ.get("BENCH_SUM_KEY", SUM_KEY)
    pipe = _redis().pipeline(transaction=False)
    for item in items:
        pipe.hincrby(key, str(item["user"]), int(item["amount"]))
        if item.get("tag") is not None:
            mark_done(pipe, key, str(item["tag"]))
    pipe.hincrby(SIZES_KEY, str(len(items)), 1)
    pipe.execute()
    return [True] * len(items)


default_registry.register_batch(
    TASK_TYPE,
    hincr_batch,
    max_batch=int(os.environ.get("BENCH_MAX_BATCH", DEFAULT_MAX_BATCH)),
)


class BatchSystem(System):
    """``bench.peers.System``'s ledger side, with the batch handler's task type."""

    handlers = "bench.batch"

    def __init__(self, url: str, args: argparse.Namespace, tmp: Path) -> None:
        self.name, self.url, self.args, self.tmp = "ledger_batch", url, args, tmp
        self.key = SUM_KEY
        self.is_ledger = True
        self.env = {
            "BENCH_REDIS_URL": url,
            "BENCH_SUM_KEY": SUM_KEY,
            "BENCH_MAX_BATCH": str(args.max_batch),
        }
        qm = QueueManager(config=StreamsConfig(redis_url=url, partitions=args.partitions))
        self.send = lambda u, a, tag: qm.enqueue(
            "default",
            TASK_TYPE,
            {"user": u, "amount": a, **({} if tag is None else {"tag": tag})},
            priority=Priority.NORMAL,
        )
        self.send_many = lambda work: [
            qm.enqueue_many(
                "default",
                TASK_TYPE,
                [{"user": u, "amount": a} for u, a in work[i : i + 500]],
                Priority.NORMAL,
            )
            for i in range(0, len(work), 500)
        ]


def sizes(client: redis.Redis) -> dict[int, int]:
    return {int(k): int(v) for k, v in client.hgetall(SIZES_KEY).items()}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    peer_arguments(ap)
    ap.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="the handler's")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp_s, EmbeddedRedis(Path(tmp_s) / "redis") as rs:
        tmp = Path(tmp_s)
        f = facts(rs.url)
        print_facts(f)
        client = redis.Redis.from_url(rs.url)
        assert rs.pid is not None
        broker_url = rs.url.rsplit("/", 1)[0] + "/1"
        os.environ["BENCH_REDIS_URL"] = rs.url  # this process's handler, if ever called

        theirs = System("dramatiq", rs.url, broker_url, args, tmp)
        ours = BatchSystem(rs.url, args, tmp)
        results: dict[str, dict[str, Any]] = {}
        for name, system in (("dramatiq", theirs), ("ledger_batch", ours)):
            expected: dict[str, int] = {}
            results[name] = drain(
                system, client, rs.pid, args.tasks, args.users, random.Random(1), expected
            )
            d = results[name]
            print(
                f"{name:<13} drain {d['drain_per_s']:>8,}/s  ({d['drain_tasks_timed']} tasks "
                f"in {d['drain_s']} s, CPU {d['cpu_ms_drain_per_task']:.3f} ms/task drain side)"
                f"  totals ok: {d['totals_ok']}",
                flush=True,
            )
        calls = sizes(client)
        client.close()

    n_calls = sum(calls.values())
    mean = sum(k * v for k, v in calls.items()) / n_calls if n_calls else 0.0
    ratio = results["ledger_batch"]["drain_per_s"] / results["dramatiq"]["drain_per_s"]
    print(
        f"\n{args.tasks} HINCRBY tasks, {args.processes} worker processes each "
        f"(ledger --concurrency {args.concurrency or 'default'}, "
        f"{args.partitions} partitions, batch handler max_batch {args.max_batch}; "
        f"dramatiq --threads {args.threads})"
    )
    print(
        f"batch calls: {n_calls}, mean size {mean:.1f}, largest {max(calls, default=0)} "
        f"(a call holds at most one worker round: WorkerConfig.batch plus reclaimed entries)"
    )
    ok = all(r["totals_ok"] for r in results.values())
    print(
        f"drain: ledger batch {results['ledger_batch']['drain_per_s']:,}/s vs dramatiq "
        f"{results['dramatiq']['drain_per_s']:,}/s = {ratio:.1f}x (target >= 10: {ratio >= 10}); "
        f"totals checked: {ok}"
    )
    write(
        "batch",
        {
            "facts": f,
            "args": vars(args),
            "results": results,
            "batch_calls": {"count": n_calls, "mean_size": round(mean, 2), "sizes": calls},
            "ratio": round(ratio, 3),
            "targets": {"drain >= 10x dramatiq": ratio >= 10},
            "totals_ok": ok,
        },
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
