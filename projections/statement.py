"""``ledger audit export``: an account statement a person can check by hand.

One row per event, in version order:

    version  time (UTC, ISO-8601)  kind  amount (signed change)  balance
    held  available  purchased_total  used_total  reason  currency
    transaction_id  hold_id  hold_amount  released  expires_at  event_id  hash

``balance`` is the balance after the event, so each row's balance is the
previous row's plus its amount, and the last row's is the account's balance;
``purchased_total`` / ``used_total`` add up the same way.

Credit holds: ``held`` is the sum of the open holds after the event and
``available = balance - held``. A ``credits_held`` row has amount 0 (nothing
is spent yet), its ``hold_id``, ``hold_amount`` (added to ``held``) and
``expires_at``; a ``hold_captured`` row's amount is minus the credits captured
(used), ``hold_amount`` is the whole hold (taken off ``held``) and
``released`` the rest given back to ``available``; ``hold_released`` and
``hold_expired`` rows have amount 0 and release the whole ``hold_amount``. So
each row's ``held`` is the previous row's plus a hold's amount or minus a
closed one's, and its ``available`` is its balance minus its held. ``hash`` is the
event's SHA-1 chain hash (``docs/audit.md``). The history is verified (chain
and fold) before anything is written: a statement is never made from a log
that does not add up.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from typing import Any, Final, TextIO

from pymongo.database import Database

from ledger.accounts import fold
from ledger.errors import UnknownAccount
from ledger.events import (
    CreditsAdjusted,
    CreditsHeld,
    CreditsPurchased,
    CreditsUsed,
    Event,
    HoldCaptured,
    HoldExpired,
    HoldReleased,
)
from streams.codec import event_id
from streams.connection import RedisClient
from streams.times import iso_utc

from .eventlog import read_log
from .store import Document

COLUMNS: Final = (
    "version",
    "time",
    "kind",
    "amount",
    "balance",
    "held",
    "available",
    "purchased_total",
    "used_total",
    "reason",
    "currency",
    "transaction_id",
    "hold_id",
    "hold_amount",
    "released",
    "expires_at",
    "event_id",
    "hash",
)
FORMATS: Final = ("csv", "jsonl")
TEXT_COLUMNS: Final = ("reason", "currency", "transaction_id")
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


def row(event: Event) -> dict[str, Any]:
    a = event.after
    if isinstance(event, HoldCaptured):
        released = event.released
    elif isinstance(event, HoldReleased | HoldExpired):
        released = event.hold_credits
    else:
        released = 0
    return {
        "version": event.version,
        "time": iso_utc(event.at_ms),
        "kind": event.kind,
        "amount": event.amount,
        "balance": a.balance,
        "held": a.held,
        "available": a.available,
        "purchased_total": a.purchased,
        "used_total": a.used,
        "reason": (
            event.reason if isinstance(event, CreditsUsed | CreditsAdjusted | CreditsHeld) else ""
        ),
        "currency": event.currency if isinstance(event, CreditsPurchased) else "",
        "transaction_id": event.transaction_id if isinstance(event, CreditsPurchased) else "",
        "hold_id": getattr(event, "hold_id", ""),
        "hold_amount": event.hold_amount,
        "released": released,
        "expires_at": iso_utc(event.expires_at_ms) if isinstance(event, CreditsHeld) else "",
        "event_id": event_id(event.user_id, event.version),
        "hash": event.hash,
    }


def statement(
    client: RedisClient, partitions: int, db: Database[Document], user: str
) -> list[dict[str, Any]]:
    """The statement rows of ``user``'s verified history.

    Raises ``UnknownAccount`` when the log has no event of ``user`` and the
    ledger's ``IntegrityError`` (``VersionGap``/``ChainBroken``) when it does not
    verify.
    """
    events = [e.event for e in read_log(client, partitions, db, user=user).get(user, [])]
    if not events:
        raise UnknownAccount(user)
    fold(events)  # raises at the first event that does not verify
    return [row(e) for e in events]


def write(rows: Sequence[dict[str, Any]], fmt: str, out: TextIO) -> None:
    """CSV with a header row, or one JSON object per line."""
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(_defused(r) for r in rows)
    elif fmt == "jsonl":
        for r in rows:
            out.write(json.dumps(r, ensure_ascii=False) + "\n")
    else:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")


def _defused(r: dict[str, Any]) -> dict[str, Any]:
    """Free text that a spreadsheet would run as a formula gets a leading ``'``."""
    out = dict(r)
    for key in TEXT_COLUMNS:
        value = out.get(key)
        if isinstance(value, str) and value.startswith(_FORMULA_START):
            out[key] = "'" + value
    return out


__all__ = ["COLUMNS", "FORMATS", "row", "statement", "write"]
