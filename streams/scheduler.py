"""Delayed tasks: move them onto their streams once due (``ledger scheduler``).

Any number of schedulers may run: a due task leaves the schedule in the same
script step that appends it, and only if it is still there and due then, so it
is moved exactly once and never early. A scheduled task's record keeps its
data with no TTL until it is moved, so no delay (up to the 30-day bound) and no
scheduler downtime loses it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from . import keys
from .connection import RedisClient, translate
from .scripts import Scripts, load, run_many

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        client: RedisClient,
        partitions: int,
        *,
        batch: int = 500,
        interval_ms: int = 50,
        scripts: Scripts | None = None,
    ) -> None:
        self.redis = client
        self.partitions = partitions
        self.batch = batch
        self.interval_ms = interval_ms
        self.scripts = scripts or load(client)
        self._stopping = threading.Event()
        self.missing = 0
        """Due tasks whose record was gone (deleted by hand): dropped, never counted as moved."""

    def tick(self) -> int:
        """Move every task due now; returns how many moved (only those).

        Each round is two pipelined calls of ``schedule.lua`` per partition, so
        that every key it touches is declared (Redis Cluster): "due" lists the
        ids due, then "move" gets their record keys and moves each one still
        scheduled and due, in one atomic step per partition (so two schedulers
        never move a task twice). A round in which nothing is due is one round trip.
        """
        moved = 0
        while True:
            parts = keys.partitions(self.partitions)
            streams = {p: [keys.stream(p, lv) for lv in keys.LEVELS_DESC] for p in parts}
            with translate():
                due: list[list[bytes]] = run_many(
                    self.redis,
                    [
                        (
                            self.scripts.schedule,
                            [keys.scheduled(p), *streams[p]],
                            ["due", self.batch],
                        )
                        for p in parts
                    ],
                )
            found = {p: [i.decode() for i in ids] for p, ids in zip(parts, due, strict=True) if ids}
            if not found:
                return moved
            with translate():
                replies: list[list[Any]] = run_many(
                    self.redis,
                    [
                        (
                            self.scripts.schedule,
                            [
                                keys.scheduled(p),
                                *streams[p],
                                *(keys.task(p, task_id) for task_id in ids),
                            ],
                            ["move", *ids],
                        )
                        for p, ids in found.items()
                    ],
                )
            for count, missing in replies:
                moved += int(count)
                if missing:
                    self.missing += len(missing)
                    log.error(
                        "scheduled tasks due with no record (not run): %s",
                        ", ".join(m.decode() for m in missing),
                    )
            if max(len(ids) for ids in found.values()) < self.batch:
                return moved

    def pending(self) -> int:
        """Tasks still waiting for their time."""
        with translate():
            pipe = self.redis.pipeline(transaction=False)
            for p in keys.partitions(self.partitions):
                pipe.zcard(keys.scheduled(p))
            return int(sum(pipe.execute()))

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick failed; retrying")
            self._stopping.wait(self.interval_ms / 1000)
