"""Delayed tasks: move them onto their streams once due (``ledger scheduler``).

Any number of schedulers may run: a due task leaves the schedule in the same
script step that appends it, so it is moved exactly once and never early.
"""

from __future__ import annotations

import logging
import threading

from . import keys
from .connection import RedisClient, translate
from .scripts import Scripts, load, run_many

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, client: RedisClient, partitions: int, *, batch: int = 500,
                 interval_ms: int = 50, scripts: Scripts | None = None) -> None:
        self.redis = client
        self.partitions = partitions
        self.batch = batch
        self.interval_ms = interval_ms
        self.scripts = scripts or load(client)
        self._stopping = threading.Event()

    def tick(self) -> int:
        """Move every task due now; returns how many moved."""
        moved = 0
        while True:
            with translate():
                counts: list[int] = run_many(self.redis, [
                    (self.scripts.schedule,
                     [keys.scheduled(p), *(keys.stream(p, lv) for lv in keys.LEVELS_DESC)],
                     [keys.tag(p) + ":task:", self.batch]) for p in range(self.partitions)])
            moved += sum(counts)
            if max(counts, default=0) < self.batch:
                return moved

    def pending(self) -> int:
        """Tasks still waiting for their time."""
        with translate():
            pipe = self.redis.pipeline(transaction=False)
            for p in range(self.partitions):
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
