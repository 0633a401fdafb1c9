"""Stream entry ids (``"<ms>-<seq>"``) as numbers.

Ids must be compared as numbers, never as text: as strings ``"5-10"`` sorts
before ``"5-2"``, so a stream's order would be lost as soon as one millisecond
holds ten entries.
"""

from __future__ import annotations

EntryId = tuple[int, int]


def parse_id(entry_id: str | bytes) -> EntryId:
    """``"1700000000000-12"`` -> ``(1700000000000, 12)``; a bare ``"<ms>"`` has seq 0."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(eid: EntryId) -> str:
    return f"{eid[0]}-{eid[1]}"
