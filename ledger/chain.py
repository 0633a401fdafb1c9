"""The per-account hash chain.

``canonical(event)`` is the byte string an event's hash covers: each field as
``<byte length>:<utf-8 bytes>``, in a fixed order, so no choice of strings can
make two different events encode alike. ``hash = sha1(canonical)``, and the
canonical form includes ``prev_hash``, so every hash commits to the account's
whole history. SHA-1 because the append runs inside Redis's Lua, whose only
digest is ``redis.sha1hex``; ``streams/lua/append.lua`` builds the very same
bytes. A changed, missing, inserted or reordered event breaks the chain at the
first version that differs.

Holds add three pieces after ``prev_hash``: ``held`` (the account's held total
after the event), the hold's amount and its expiry (ms). They are appended
only when one of them is non-zero, so an event of an account that never held
credits hashes exactly as it did before holds existed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from .errors import ChainBroken, VersionGap
from .events import GENESIS, Event


def _piece(value: str | int) -> bytes:
    raw = str(value).encode("utf-8")
    return str(len(raw)).encode("ascii") + b":" + raw


def canonical(
    kind: str,
    user_id: str,
    version: int,
    at_ms: int,
    amount: int,
    balance: int,
    purchased: int,
    used: int,
    text: str,
    ref: str,
    prev_hash: str,
    held: int = 0,
    hold_amount: int = 0,
    hold_expiry_ms: int = 0,
) -> bytes:
    """The bytes an event's hash covers (mirrored field for field by append.lua)."""
    values: tuple[str | int, ...] = (
        kind,
        user_id,
        version,
        at_ms,
        amount,
        balance,
        purchased,
        used,
        text,
        ref,
        prev_hash,
    )
    if held or hold_amount or hold_expiry_ms:
        values += (held, hold_amount, hold_expiry_ms)
    return b"".join(_piece(v) for v in values)


def link(
    kind: str,
    user_id: str,
    version: int,
    at_ms: int,
    amount: int,
    balance: int,
    purchased: int,
    used: int,
    text: str,
    ref: str,
    prev_hash: str,
    held: int = 0,
    hold_amount: int = 0,
    hold_expiry_ms: int = 0,
) -> str:
    """The hash of an event with these fields."""
    data = canonical(
        kind,
        user_id,
        version,
        at_ms,
        amount,
        balance,
        purchased,
        used,
        text,
        ref,
        prev_hash,
        held,
        hold_amount,
        hold_expiry_ms,
    )
    return hashlib.sha1(data).hexdigest()


def hash_of(event: Event) -> str:
    """Recompute an event's hash from its fields (ignores ``event.hash``)."""
    a = event.after
    return link(
        event.kind,
        event.user_id,
        event.version,
        event.at_ms,
        event.amount,
        a.balance,
        a.purchased,
        a.used,
        event.text,
        event.ref,
        event.prev_hash,
        a.held,
        event.hold_amount,
        event.hold_expiry_ms,
    )


def verify(events: Iterable[Event]) -> ChainBroken | VersionGap | None:
    """The first break in one account's chain, or None when it verifies.

    Checks that versions run 1, 2, 3 …, that each event links to the previous
    event's hash, and that each stored hash matches the event's fields.
    """
    prev = GENESIS
    expected = 1
    for event in events:
        if event.version != expected:
            return VersionGap(event.user_id, expected, event.version)
        if event.prev_hash != prev:
            return ChainBroken(event.user_id, event.version, "does not link to the previous event")
        if hash_of(event) != event.hash:
            return ChainBroken(event.user_id, event.version, "hash does not match its fields")
        prev = event.hash
        expected += 1
    return None
