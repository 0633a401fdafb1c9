"""Consumer groups as Redis reports them (``XINFO GROUPS``, the ``XPENDING`` summary).

One parser for what status, retention, the log readers and the metrics read
about groups, so each asks a question ("how far has this group acknowledged?")
instead of picking through reply dictionaries. A stream that does not exist
yet has no groups; any other failure (a connection error) is the caller's to
report, never an empty answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis

from .connection import RedisClient
from .ids import EntryId, parse_id
from .replies import text


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupInfo:
    """One consumer group on one stream."""

    name: str
    consumers: int
    pending: int
    last_delivered: EntryId
    lag: int | None
    """Entries not yet delivered to the group; None where Redis (6.2) can't tell."""

    @property
    def after_last_delivered(self) -> EntryId:
        """The smallest id the group has not been given yet."""
        ms, seq = self.last_delivered
        return (ms, seq + 1)


def parse_group(raw: Mapping[str, object]) -> GroupInfo:
    """One ``XINFO GROUPS`` item."""
    lag = raw.get("lag")
    return GroupInfo(
        name=text(raw.get("name")),
        consumers=_int(raw.get("consumers")),
        pending=_int(raw.get("pending")),
        last_delivered=parse_id(text(raw.get("last-delivered-id") or "0-0")),
        lag=None if lag is None else _int(lag),
    )


def parse_groups(reply: Iterable[Mapping[str, object]]) -> dict[str, GroupInfo]:
    """An ``XINFO GROUPS`` reply, by group name."""
    return {g.name: g for g in map(parse_group, reply)}


def groups(client: RedisClient, stream: str) -> dict[str, GroupInfo]:
    """The groups of ``stream`` by name; none when the stream does not exist."""
    try:
        reply = client.xinfo_groups(stream)
    except redis.ResponseError:  # no such stream (connection errors propagate)
        return {}
    return parse_groups(reply)


def pending_min(summary: object) -> EntryId | None:
    """The oldest pending id of an ``XPENDING`` summary; None when nothing is pending."""
    oldest = summary.get("min") if isinstance(summary, Mapping) else None
    return parse_id(text(oldest)) if oldest else None


def oldest_pending(client: RedisClient, stream: str, group: str) -> EntryId | None:
    """The group's oldest pending entry on ``stream``; None when nothing is pending."""
    return pending_min(client.xpending(stream, group))


def acked_below(client: RedisClient, stream: str, group: GroupInfo) -> EntryId | None:
    """The id below which ``group`` has acknowledged every entry it was given: its
    oldest pending entry, else the one after the last delivered. None when its
    pending entries were acknowledged between the two reads (ask again)."""
    if group.pending <= 0:
        return group.after_last_delivered
    oldest = oldest_pending(client, stream, group.name)
    return None if oldest is None else needed_from(group, oldest)


def needed_from(group: GroupInfo, oldest_pending: EntryId | None) -> EntryId:
    """The smallest id ``group`` still needs: its oldest pending entry (None: none
    pending), or the one after the last it was given, whichever is smaller."""
    after = group.after_last_delivered
    return after if oldest_pending is None else min(oldest_pending, after)


def _int(value: object) -> int:
    if value is None:
        return 0
    return value if isinstance(value, int) else int(text(value))


__all__ = [
    "GroupInfo",
    "acked_below",
    "groups",
    "needed_from",
    "oldest_pending",
    "parse_group",
    "parse_groups",
    "pending_min",
]
