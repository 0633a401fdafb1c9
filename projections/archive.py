"""The ``events`` archive: every event once, with its position in the log.

    {_id: "<user_id>:<version>", user_id, version, kind, at_ms, amount, text, ref,
     balance_after, purchased_total, used_total, prev_hash, hash, stream, entry_id,
     [held_total, hold_amount, hold_expires_at_ms]}

The three hold fields are stored when the event has them (``codec.event_fields``):
a hold event, or any event of an account with credits held.

Once an entry is archived and every group has acknowledged it, its stream may be
trimmed: readers of the log (replay, audit) join the archive and the streams.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ledger.events import Event
from streams.codec import decode_event, event_fields, event_id

from .projection import Insert, Recorded, Write
from .store import EVENTS

# archive field -> stream field (the codec's names)
_FIELDS = {
    "kind": "k",
    "user_id": "u",
    "version": "v",
    "at_ms": "t",
    "amount": "a",
    "balance_after": "b",
    "purchased_total": "p",
    "used_total": "x",
    "text": "tx",
    "ref": "r",
    "prev_hash": "ph",
    "hash": "h",
}
_HOLD_FIELDS = {"held_total": "hd", "hold_amount": "ha", "hold_expires_at_ms": "he"}
_INTS = {
    "version",
    "at_ms",
    "amount",
    "balance_after",
    "purchased_total",
    "used_total",
    *_HOLD_FIELDS,
}


def archive_document(rec: Recorded) -> dict[str, Any]:
    fields = event_fields(rec.event, "")
    doc: dict[str, Any] = {"_id": event_id(rec.event.user_id, rec.event.version)}
    for name, short in _FIELDS.items():
        doc[name] = int(fields[short]) if name in _INTS else fields[short]
    for name, short in _HOLD_FIELDS.items():
        if short in fields:
            doc[name] = int(fields[short])
    doc.update(stream=rec.stream, entry_id=rec.entry_id)
    return doc


def event_from_document(doc: Mapping[str, Any]) -> Event:
    """The event an archive document holds (DecodeError if it was mangled)."""
    raw = {short.encode(): str(doc.get(name, "")).encode() for name, short in _FIELDS.items()}
    for name, short in _HOLD_FIELDS.items():
        if name in doc:
            raw[short.encode()] = str(doc[name]).encode()
    return decode_event(raw)


class Archive:
    name = "events"
    collection = EVENTS

    def plan(self, batch: Sequence[Recorded]) -> Sequence[Write]:
        return [Insert(document=archive_document(r)) for r in batch]
