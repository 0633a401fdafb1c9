"""The ledger on a 3-master Redis Cluster next to a single Redis, in one run.

    python -m bench.cluster [--events 20000] [--tasks 10000] [--procs 1,2,4] [--batch 200]

For each backend (a single ``redis-server``; three cluster masters from
``api.dev.cluster``, both with AOF ``appendfsync everysec``), with the default
partition count:

- **append**: ``--events`` purchases and uses over 1,000 accounts through
  ``QueueManager.append_batch`` (``--batch`` per call), one client thread;
- **enqueue**: ``--tasks`` no-op tasks through ``enqueue_many`` (500 per call);
- **drain**: ``--tasks`` no-op tasks enqueued first, then 1, 2, 4 ``ledger
  worker`` processes; tasks/s from the first completed task until every task is
  acknowledged.

For each phase: the rate, and the CPU every redis-server spent on it
(``/proc/<pid>/stat``), as microseconds per event or task, summed and per node.
The cluster is not faster on 2 shared cores: the client, the workers and three
servers compete for them. What scales is the per-node server cost: a master on
a dedicated core runs about ``1e6 / (µs per item on that node)`` items/s, and a
cluster whose partitions spread evenly over M masters about M times that, if
the clients keep up. The closing lines print that model for 16 masters, and say
it is a model. Writes bench/results/cluster.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from redis.cluster import RedisCluster

from api.dev.cluster import RedisClusterNodes
from api.dev.embedded import EmbeddedRedis
from api.dev.loadgen import credit_traffic, registrations, user_ids
from bench.common import (
    acknowledged,
    cpu_ms,
    facts,
    groups_idle,
    ledger,
    print_facts,
    spawn,
    stop,
    write,
)
from ledger.commands import Command
from ledger.tasks import Priority
from streams import QueueManager, StreamsConfig
from streams.connection import connect

MODEL_MASTERS = 16


class Backend:
    """A Redis (single or cluster) under measurement: its URL and server pids."""

    def __init__(self, name: str, url: str, pids: dict[str, int]) -> None:
        self.name = name
        self.url = url
        self.pids = pids  # node label -> redis-server pid

    def cpu(self) -> dict[str, float]:
        return {label: cpu_ms([pid]) for label, pid in self.pids.items()}


@contextmanager
def single(tmp: Path) -> Iterator[Backend]:
    with EmbeddedRedis(tmp / "single") as server:
        assert server.pid is not None
        yield Backend("single", server.url, {"node": server.pid})


@contextmanager
def cluster(tmp: Path) -> Iterator[Backend]:
    with RedisClusterNodes(tmp / "cluster", masters=3, appendonly=True) as nodes:
        pids = {f"m{i}": node.pid for i, node in enumerate(nodes.nodes) if node.pid is not None}
        yield Backend("cluster", nodes.url, pids)


def measured(backend: Backend, work: Callable[[], int]) -> dict[str, Any]:
    """Run ``work`` (returns the items it did); its rate and server CPU per item."""
    c0 = backend.cpu()
    t0 = time.perf_counter()
    n = work()
    secs = time.perf_counter() - t0
    c1 = backend.cpu()
    per_node = {label: round((c1[label] - c0[label]) * 1000 / n, 1) for label in c0}
    return {
        "items": n,
        "seconds": round(secs, 3),
        "per_s": round(n / secs),
        "redis_us_per_item": round(sum(per_node.values()), 1),
        "redis_us_per_item_by_node": per_node,
    }


def drain(backend: Backend, n_procs: int, tasks: int, tmp: Path) -> dict[str, Any]:
    """Enqueue ``tasks`` no-op tasks, then time ``n_procs`` worker processes draining them."""
    client = connect(backend.url)
    _flush(client)
    config = StreamsConfig(redis_url=backend.url)
    qm = QueueManager(config=config)
    try:
        enqueue(qm, tasks)
        procs = [
            spawn(
                ledger("worker", "--import", "bench.peer_handlers", "--log-level", "WARNING"),
                tmp / f"workers-{backend.name}.log",
                {"REDIS_URL": backend.url},
            )
            for _ in range(n_procs)
        ]
        try:
            while acknowledged(client, config.partitions) == 0:
                time.sleep(0.005)
            first = acknowledged(client, config.partitions)

            def work() -> int:
                while not groups_idle(client, config.partitions):
                    time.sleep(0.01)
                return tasks - first

            c0 = cpu_ms([p.pid for p in procs])
            row = measured(backend, work)
            row["worker_cpu_us_per_task"] = round(
                (cpu_ms([p.pid for p in procs]) - c0) * 1000 / row["items"], 1
            )
        finally:
            stop(procs)
        return row
    finally:
        qm.close()
        client.close()


def enqueue(qm: QueueManager, tasks: int) -> int:
    data = [{"user": f"u{i % 1000}", "amount": 1} for i in range(tasks)]
    for i in range(0, tasks, 500):
        qm.enqueue_many("default", "noop", data[i : i + 500], Priority.NORMAL)
    return tasks


def appends(qm: QueueManager, cmds: Sequence[Command], batch: int) -> int:
    for i in range(0, len(cmds), batch):
        qm.append_batch([(c, Priority.NORMAL, None) for c in cmds[i : i + batch]])
    return len(cmds)


def _flush(client: Any) -> None:
    if isinstance(client, RedisCluster):
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
        client.flushall()


def run(backend: Backend, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"backend": backend.name, "nodes": len(backend.pids)}
    qm = QueueManager(config=StreamsConfig(redis_url=backend.url))
    try:
        users = user_ids(1000, prefix="bench")
        appends(qm, registrations(users), args.batch)
        cmds = list(credit_traffic(users, args.events, seed=11))
        out["append"] = measured(backend, lambda: appends(qm, cmds, args.batch))
        out["enqueue"] = measured(backend, lambda: enqueue(qm, args.tasks))
    finally:
        qm.close()
    out["drain"] = {n: drain(backend, n, args.tasks, tmp) for n in args.procs}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--procs", default="1,2,4")
    args = ap.parse_args(argv)
    args.procs = [int(x) for x in args.procs.split(",")]
    partitions = StreamsConfig().partitions
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        for make in (single, cluster):
            with make(tmp) as backend:
                if not results:
                    f = facts(backend.url)
                    print_facts(f)
                print(f"-- {backend.name} ({len(backend.pids)} node(s)) --", flush=True)
                results.append(run(backend, args, tmp))
    print(f"\npartitions: {partitions} (the default); AOF everysec on every node")
    head = f"{'case':<26}{'backend':>9}{'items/s':>10}{'redis µs/item':>15}  per node"
    print(head)
    for r in results:
        phases = [("append (batched)", r["append"]), ("enqueue_many", r["enqueue"])]
        phases += [(f"drain, {n} worker proc(s)", row) for n, row in r["drain"].items()]
        for name, row in phases:
            nodes = " ".join(f"{v:g}" for v in row["redis_us_per_item_by_node"].values())
            print(
                f"{name:<26}{r['backend']:>9}{row['per_s']:>10,}"
                f"{row['redis_us_per_item']:>15.1f}  {nodes}"
            )
    model = _model(results[-1])
    print(f"\nModel on paper (not measured): a {MODEL_MASTERS}-master cluster, one dedicated")
    print("core per master, partitions spread evenly, clients not the bottleneck:")
    for name, per_s in model.items():
        print(f"  {name:<22}{per_s:>12,} /s")
    write("cluster", {"args": vars(args), "partitions": partitions, "results": results,
                      "model_16_masters": model})  # fmt: skip
    return 0


def _model(cluster_row: dict[str, Any]) -> dict[str, int]:
    """Items/s of ``MODEL_MASTERS`` masters from the cluster's server µs per item:
    each master's share is 1/M of the items, so the cluster runs M x 1e6 / total µs."""
    phases = {"append (batched)": cluster_row["append"], "enqueue_many": cluster_row["enqueue"]}
    most = max(cluster_row["drain"])
    phases[f"drain ({most} procs' cost)"] = cluster_row["drain"][most]
    return {
        name: round(MODEL_MASTERS * 1e6 / row["redis_us_per_item"])
        for name, row in phases.items()
        if row["redis_us_per_item"] > 0
    }


if __name__ == "__main__":
    raise SystemExit(main())
