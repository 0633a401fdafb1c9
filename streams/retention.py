"""Stream retention: trim what every consumer group is done with.

An entry may go once every group on its stream has acknowledged it and it is
older than the retention window. The groups that must exist first are named
by the caller (by default the workers and every projector, the ``proj:events``
archive included), so nothing is trimmed before a group that needs it saw it.
The point is computed per stream from the groups themselves: a group's oldest
pending entry, or the entry after the last one it was given. Groups only
move forward, so a point that was safe stays safe while XTRIM runs. Trimming
is exact (``MINID``, not ``~``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from . import keys
from .connection import RedisClient, translate

ARCHIVE_GROUP = "proj:events"
REQUIRED_GROUPS = ("workers", "proj:balances", "proj:credit_scores", ARCHIVE_GROUP)


def _id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, seq = text.split("-")
    return int(ms), int(seq)


def trim_point(client: RedisClient, stream: str,
               required: Iterable[str] = REQUIRED_GROUPS) -> tuple[int, int] | None:
    """The smallest entry id some group still needs; None if a required group is missing."""
    with translate():
        try:
            groups: list[dict[str, Any]] = client.xinfo_groups(stream)
        except Exception:
            return None  # no stream yet
        names = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
                 for g in groups}
        if not set(required) <= names:
            return None
        point: tuple[int, int] | None = None
        for g in groups:
            if int(g["pending"]) > 0:
                smallest = client.xpending(stream, g["name"])["min"]
                if smallest is None:  # acknowledged meanwhile: judge it next time
                    return None
                oldest = _id(smallest)
            else:
                ms, seq = _id(g["last-delivered-id"])
                oldest = (ms, seq + 1)
            point = oldest if point is None else min(point, oldest)
    return point


def trim(client: RedisClient, partitions: int, *, keep_ms: int,
         required: Iterable[str] = REQUIRED_GROUPS, now_ms: int | None = None) -> int:
    """Trim every stream; returns the number of entries removed."""
    horizon = ((now_ms if now_ms is not None else int(time.time() * 1000)) - keep_ms, 0)
    removed = 0
    for p in range(partitions):
        for level in keys.LEVELS_DESC:
            stream = keys.stream(p, level)
            point = trim_point(client, stream, required)
            if point is None:
                continue
            ms, seq = min(point, horizon)
            with translate():
                removed += client.xtrim(stream, minid=f"{ms}-{seq}", approximate=False)
    return removed
