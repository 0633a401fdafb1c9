"""Delete completed tasks' stream entries once no group needs them.

A task entry is ~100 bytes of stream that nothing reads again once the task
completed: its record says what happened, and projectors skip tasks. A worker
remembers the entries it completed and, now and then, deletes (XDEL) those below
the point every group of their stream is past: each group's oldest pending
entry, or the one after its last delivered (``_points``). Never one
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
from .groups import needed_from, parse_groups, pending_min
from .ids import EntryId, parse_id

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
        """Delete what every group is past, in three pipelined round trips for all
        streams (groups, the pending summaries of groups with pending entries,
        XDEL); keep the rest (and, on an error, everything) for the next time.
        Returns how many were deleted."""
        with self._lock:
            taken, self._ids = self._ids, defaultdict(list)
            self._count = 0
        if not taken:
            return 0
        left = dict(taken)
        gone = 0
        try:
            points = _points(client, list(taken))
            below = {
                stream: [i for i in ids if parse_id(i) < points[stream]]
                for stream, ids in taken.items()
                if stream in points
            }
            with translate():
                pipe = client.pipeline(transaction=False)
                for stream, ids in below.items():
                    if ids:
                        pipe.xdel(stream, *ids)
                pipe.execute()
            gone = sum(len(ids) for ids in below.values())
            # a stream with no group (or gone) has nothing to prune: forgotten
            left = {
                stream: kept
                for stream in below
                if (kept := [i for i in taken[stream] if parse_id(i) >= points[stream]])
            }
        finally:
            with self._lock:
                for stream, ids in left.items():
                    self._ids[stream][:0] = ids
                    self._count += len(ids)
                self.deleted += gone
        return gone


def _points(client: RedisClient, streams: list[str]) -> dict[str, EntryId]:
    """Per stream, the smallest id some group still needs: each group's oldest
    pending entry, else the one after its last delivered (``groups.acked_below``,
    for many streams at once). A stream with no group or no longer there is left
    out. Groups only move forward, so a point read here stays safe."""
    with translate():
        pipe = client.pipeline(transaction=False)
        for stream in streams:
            pipe.xinfo_groups(stream)
        infos = pipe.execute(raise_on_error=False)
        found = {
            stream: parse_groups(reply)
            for stream, reply in zip(streams, infos, strict=True)
            if not isinstance(reply, Exception) and reply
        }
        asks = [(s, g) for s, gs in found.items() for g in gs.values() if g.pending > 0]
        pipe = client.pipeline(transaction=False)
        for stream, g in asks:
            pipe.xpending(stream, g.name)
        summaries = pipe.execute() if asks else []
    oldest = {
        (stream, g.name): pending_min(summary)
        for (stream, g), summary in zip(asks, summaries, strict=True)
    }
    # a group with none pending any more: all it was given by XINFO's time is acked
    return {
        stream: min(needed_from(g, oldest.get((stream, g.name))) for g in gs.values())
        for stream, gs in found.items()
    }
