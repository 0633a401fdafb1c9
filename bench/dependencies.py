"""What a task dependency and the claim keep-alive cost.

    python -m bench.dependencies [--pairs 400] [--every-ms 5] [--partitions 16]

On one private redis-server, with two consumer threads in this process
(``QueueManager.start_workers``) and trivial handlers:

  latency    pairs (parent, child depends_on parent) enqueued one pair every
             ``--every-ms``, the parent's handler taking 5 ms (so the child waits
             for it): from the parent's handler returning to the child's handler
             starting (settle with its outbox entry, the release, the child's
             read), p50/p99/max
  commands   Redis commands (``INFO commandstats``, calls inside scripts
             included) for ``--pairs`` pairs with the dependency, minus the same
             pairs enqueued independently: the dependency's own cost, per pair;
             and the script calls (EVALSHA) among them
  keepalive  one task whose handler runs 5 x ``claim_idle_ms`` (400 ms): the
             renewals (XCLAIM ... JUSTID) it took, and the commands per second of
             handler time; a round shorter than claim_idle/4 renews nothing

Prints the figures with the machine's facts; writes bench/results/dependencies.json.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis

from api.dev.embedded import EmbeddedRedis
from bench.common import facts, print_facts, summary, wait_until, write
from bench.peers import commandstats, delta
from streams import HandlerRegistry, QueueManager, StreamsConfig
from streams.connection import connect

CLAIM_IDLE_MS = 400
PARENT_MS = 5
"""A parent's handler runs this long, so that its child is linked (and released
through the outbox) rather than enqueued after the parent ended."""


def manager(url: str, partitions: int, registry: HandlerRegistry) -> QueueManager:
    return QueueManager(
        config=StreamsConfig(redis_url=url, partitions=partitions),
        client=connect(url),
        registry=registry,
    )


def pairs(qm: QueueManager, n: int, every_s: float, linked: bool) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        parent = qm.enqueue("default", "parent", {"i": i, "linked": linked})
        child = qm.enqueue(
            "default", "child", {"i": i, "linked": linked}, depends_on=[parent] if linked else None
        )
        out.append((parent, child))
        time.sleep(every_s)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    ended: dict[tuple[int, bool], float] = {}
    started: dict[tuple[int, bool], float] = {}
    registry = HandlerRegistry()

    def parent(data: Mapping[str, Any], db_manager: Any) -> bool:
        time.sleep(PARENT_MS / 1000)  # the child is linked before its parent ends
        ended[(data["i"], data["linked"])] = time.monotonic()
        return True

    def child(data: Mapping[str, Any], db_manager: Any) -> bool:
        started[(data["i"], data["linked"])] = time.monotonic()
        return True

    long_done = threading.Event()

    def long(data: Mapping[str, Any], db_manager: Any) -> bool:
        time.sleep(5 * CLAIM_IDLE_MS / 1000)
        long_done.set()
        return True

    registry.register("parent", parent)
    registry.register("child", child)
    registry.register("long", long)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp)) as server:
        url = server.url
        f = facts(url)
        print_facts(f)
        qm = manager(url, args.partitions, registry)
        client = redis.Redis.from_url(url)  # one server: the counters are all here
        qm.start_workers(2)  # default claim_idle: its sweeps add little to the counts
        try:
            figures: dict[str, Any] = {}
            for linked in (False, True):
                before = commandstats(client)
                pairs(qm, args.pairs, args.every_ms / 1000, linked)
                done = wait_until(
                    lambda: sum(k[1] == linked for k in started) == args.pairs,  # noqa: B023
                    timeout=60,
                )
                assert done, "the children did not all run"
                time.sleep(0.3)  # the last settles
                figures["linked" if linked else "independent"] = delta(commandstats(client), before)
            lat = [
                (started[(i, True)] - ended[(i, True)]) * 1000
                for i in range(args.pairs)
                if started[(i, True)] >= ended[(i, True)]
            ]
            assert len(lat) == args.pairs, "a child started before its parent ended"
            own, base = figures["linked"], figures["independent"]
            extra = {
                k: (own.get(k, 0) - base.get(k, 0)) / args.pairs
                for k in sorted(set(own) | set(base))
            }
            qm.stop_workers()
            qm.start_workers(2, claim_idle_ms=CLAIM_IDLE_MS)
            time.sleep(1.0)  # idle workers: what they run meanwhile is counted as a base
            before = commandstats(client)
            t0 = time.monotonic()
            time.sleep(5 * CLAIM_IDLE_MS / 1000)
            idle = delta(commandstats(client), before)
            before = commandstats(client)
            t0 = time.monotonic()
            qm.enqueue("default", "long", {})
            assert long_done.wait(10), "the long task did not finish"
            held_s = time.monotonic() - t0
            kept = delta(commandstats(client), before)
        finally:
            qm.close()
    result = {
        "facts": f,
        "pairs": args.pairs,
        "every_ms": args.every_ms,
        "partitions": args.partitions,
        "latency_ms": summary(lat),
        "commands_per_dependency": round(sum(extra.values()), 1),
        "script_calls_per_dependency": round(extra.get("evalsha", 0), 2),
        "by_command": {k: round(v, 2) for k, v in extra.items() if abs(v) >= 0.05},
        "keepalive": {
            "handler_s": round(held_s, 2),
            "claim_idle_ms": CLAIM_IDLE_MS,
            "renewals": kept.get("xclaim", 0),
            "commands": sum(kept.values()),
            "commands_idle_same_time": sum(idle.values()),
        },
    }
    s = result["latency_ms"]
    print(
        f"parent done -> child started ({args.pairs} pairs, one per {args.every_ms} ms): "
        f"p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms, max {s['max']:.2f} ms"
    )
    print(
        f"a dependency costs {result['commands_per_dependency']} Redis commands "
        f"({result['script_calls_per_dependency']} script calls): {result['by_command']}"
    )
    k = result["keepalive"]
    print(
        f"keep-alive: a {k['handler_s']} s handler (claim_idle {CLAIM_IDLE_MS} ms) took "
        f"{k['renewals']} renewals; {k['commands']} commands in all while it ran, against "
        f"{k['commands_idle_same_time']} by the idle workers in the same time"
    )
    print(f"wrote {write('dependencies', result)}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=400)
    ap.add_argument("--every-ms", type=float, default=10.0)
    ap.add_argument("--partitions", type=int, default=16)
    run(ap.parse_args())


if __name__ == "__main__":
    main()
