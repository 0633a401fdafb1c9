"""What a projection is: a pure plan from recorded events to database writes.

A projection never reads the database to decide. Each event carries the state
after it, so a read model only needs "newer version wins": a write is guarded
by the document's version and repeating, reordering or replaying events
changes nothing. ``coalesce`` keeps the newest event per account of a batch,
so a batch costs one write per account, not one per event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ledger.events import Event


@dataclass(frozen=True, slots=True, kw_only=True)
class Recorded:
    """An event with its position in the log."""

    stream: str
    entry_id: str
    event: Event


@dataclass(frozen=True, slots=True, kw_only=True)
class Upsert:
    """Set ``fields`` on document ``key`` unless it already holds ``version`` or newer."""

    key: str
    version: int
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Insert:
    """Insert ``document`` once (a duplicate ``_id`` means: already there)."""

    document: Mapping[str, Any]


Write = Upsert | Insert


class Projection(Protocol):
    """A read model built from the log."""

    name: str
    """Its consumer group is ``proj:<name>``; its checkpoint document is ``<name>``."""
    collection: str

    def plan(self, batch: Sequence[Recorded]) -> Sequence[Write]: ...


def coalesce(batch: Iterable[Recorded]) -> list[Recorded]:
    """The newest event of each account in the batch (by version), in first-seen order."""
    newest: dict[str, Recorded] = {}
    for rec in batch:
        seen = newest.get(rec.event.user_id)
        if seen is None or rec.event.version > seen.event.version:
            newest[rec.event.user_id] = rec
    return list(newest.values())
