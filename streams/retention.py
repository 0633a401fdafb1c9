"""Stream retention: trim what every consumer group is done with.

An entry may go once every group on its stream has acknowledged it and it is
older than the retention window. The groups that must exist first are named
by the caller (by default the workers and every projector, the ``proj:events``
archive included), so nothing is trimmed before a group that needs it saw it.
The point is computed per stream from the groups themselves: a group's oldest
pending entry, or the entry after the last one it was given. Groups only
move forward, so a point that was safe stays safe while XTRIM runs. Trimming
is exact (``MINID``, not ``~``).

An acknowledgement by the archive group means "archived" except for an entry
it dead-lettered: settle.lua acknowledges a dead letter too. So a stream is
never trimmed past the oldest event that the archive group dead-lettered and
that is still in the dead letters: until it is requeued (and archived) or
removed by an operator, the stream keeps it, and the log readers still find
it. Undecodable entries (poison) are not events and hold nothing back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from . import keys
from .codec import EventMessage, decode
from .connection import RedisClient, translate
from .errors import DecodeError
from .groups import acked_below, groups
from .ids import EntryId, parse_id
from .replies import entries

log = logging.getLogger(__name__)

ARCHIVE_GROUP = "proj:events"
REQUIRED_GROUPS = ("workers", "proj:balances", "proj:credit_scores", ARCHIVE_GROUP)
_PAGE = 500


def trim_point(
    client: RedisClient, stream: str, required: Iterable[str] = REQUIRED_GROUPS
) -> EntryId | None:
    """The smallest entry id some group still needs; None if a required group is missing."""
    with translate():
        found = groups(client, stream)
        if not set(required) <= found.keys():
            return None  # a required group is missing, or no stream yet
        point: EntryId | None = None
        for g in found.values():
            oldest = acked_below(client, stream, g)
            if oldest is None:  # acknowledged meanwhile: judge it next time
                return None
            point = oldest if point is None else min(point, oldest)
    return point


def held_by_dead_letters(
    client: RedisClient, partition: keys.Partition, group: str = ARCHIVE_GROUP
) -> dict[str, EntryId]:
    """Per stream of ``partition``: the oldest original id of an event that ``group``
    dead-lettered and that is still in the partition's dead letters."""
    held: dict[str, EntryId] = {}
    start = "-"
    while True:
        with translate():
            page = entries(client, keys.dead(partition), min=start, count=_PAGE)
        for _, raw in page:
            if raw.get(b"_group", b"").decode(errors="replace") != group:
                continue
            own = {k: v for k, v in raw.items() if not k.startswith(b"_") and k != b"rq"}
            try:
                if not isinstance(decode(own), EventMessage):
                    continue
                stream, original = raw[b"_stream"].decode(), parse_id(raw[b"_id"])
            except (DecodeError, KeyError, ValueError, UnicodeDecodeError):
                continue  # poison, not an event: nothing to archive
            if stream not in held or original < held[stream]:
                held[stream] = original
        if len(page) < _PAGE:
            return held
        ms, seq = parse_id(page[-1][0])
        start = f"{ms}-{seq + 1}"


def trim(
    client: RedisClient,
    partitions: int,
    *,
    keep_ms: int,
    required: Iterable[str] = REQUIRED_GROUPS,
    now_ms: int | None = None,
) -> int:
    """Trim every stream; returns the number of entries removed."""
    horizon = ((now_ms if now_ms is not None else int(time.time() * 1000)) - keep_ms, 0)
    removed = 0
    for p in keys.partitions(partitions):
        points = {
            stream: trim_point(client, stream, required)
            for stream in (keys.stream(p, level) for level in keys.LEVELS_DESC)
        }
        # Read the dead letters after the points: settle.lua dead-letters and acks in
        # one step, so an entry acknowledged before a point was taken is seen here.
        held = held_by_dead_letters(client, p)
        for stream, point in points.items():
            if point is None:
                continue
            limit = min(point, horizon)
            if stream in held and held[stream] < limit:
                log.warning(
                    "%s: not trimmed past %d-%d, an event the archive dead-lettered "
                    "(requeue it with `ledger dlq requeue`)",
                    stream,
                    *held[stream],
                )
                limit = held[stream]
            ms, seq = limit
            with translate():
                removed += client.xtrim(stream, minid=f"{ms}-{seq}", approximate=False)
    return removed
