"""The hand-rolled side of ``bench.peers``: one stream, one group, an XREADGROUP loop.

    python -m bench.peer_loop        # one worker process; run several

The floor of a Redis Streams task queue: the producer XADDs ``u a [t]`` to
``bench:loop``; each worker reads up to ``COUNT`` entries (blocking when there
are none), runs the same HINCRBY as the others (``bench.peer_handlers.record``)
and acknowledges the batch with one XACK. No retries, no status, no priorities,
no stats. ``BENCH_REDIS_URL``/``BENCH_SUM_KEY`` as for the others.
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any

import redis

from bench.peer_handlers import record

STREAM = "bench:loop"
GROUP = "loop"
COUNT = 100


def ensure_group(client: redis.Redis) -> None:
    try:
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def send(client: redis.Redis, user: str, amount: int, tag: str | None) -> None:
    fields: dict[str, str | int] = {"u": user, "a": amount}
    if tag is not None:
        fields["t"] = tag
    client.xadd(STREAM, fields)  # type: ignore[arg-type]


def main() -> int:
    client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    key = os.environ.get("BENCH_SUM_KEY", "bench:sum:loop")
    ensure_group(client)
    consumer = f"loop-{os.getpid()}"
    running = True

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, on_term)
    while running:
        reply: Any = client.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=COUNT, block=500)
        for _, entries in reply or []:
            done = []
            for entry_id, f in entries:
                tag = f.get(b"t")
                record(f[b"u"].decode(), int(f[b"a"]), tag.decode() if tag else None, key)
                done.append(entry_id)
            if done:
                client.xack(STREAM, GROUP, *done)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
