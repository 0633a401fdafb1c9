"""Delete completed tasks' stream entries once no group needs them.

A task entry is ~100 bytes of stream that nothing reads again once the task
completed: its record says what happened, and projectors skip tasks. A worker
remembers the entries it completed and, now and then, deletes (XDEL) those below
the point every group of their stream is past: each group's oldest pending
entry, or the one after its last delivered (``retention.trim_point``). Never one
a group has not been given yet: a deleted entry ahead of a group's position
leaves ``XINFO GROUPS`` unable to tell that group's lag (Redis 7.0 answers nil
until the group passes it), and the lag is what operators and drains watch.

What a process remembered is lost if it dies: those entries stay until the
retention trim (``ledger retention``) removes them, as every entry did before.
Events are never deleted here; they are the log.
"""

from __future__ import annotations

import threading
from collections import defaultdict

from ledger.tasks import Priority

from . import keys
from .connection import RedisClient, translate
from .ids import parse_id
from .retention import trim_point

MAX_REMEMBERED = 200_000
"""Completed entries a process remembers at most (~100 bytes each in Python); beyond
it, the oldest are left to the retention trim."""


class Pruner:
    """The completed task entries of one process, per stream, until deleted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[str, list[str]] = defaultdict(list)
        self._count = 0
        self.deleted = 0

    def completed(self, p: keys.Partition, level: Priority, entry_id: str) -> None:
        with self._lock:
            if self._count >= MAX_REMEMBERED:
                return
            self._ids[keys.stream(p, level)].append(entry_id)
            self._count += 1

    def prune(self, client: RedisClient) -> int:
        """Delete what every group is past; keep the rest (and, on an error, what
        was not looked at) for the next time. Returns how many were deleted."""
        with self._lock:
            taken, self._ids = self._ids, defaultdict(list)
            self._count = 0
        left = dict(taken)
        gone = 0
        try:
            for stream, ids in taken.items():
                point = trim_point(client, stream, required=())
                if point is not None:
                    below = [i for i in ids if parse_id(i) < point]
                    if below:
                        with translate():
                            client.xdel(stream, *below)
                        gone += len(below)
                    left[stream] = [i for i in ids if parse_id(i) >= point]
                if not left[stream]:
                    del left[stream]
        finally:
            with self._lock:
                for stream, ids in left.items():
                    self._ids[stream][:0] = ids
                    self._count += len(ids)
                self.deleted += gone
        return gone
