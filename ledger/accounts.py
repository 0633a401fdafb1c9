"""An account is the fold of its events.

``apply`` is the only way state changes, and it trusts nothing: each event must
carry the next version, link to the account's head, hash to its own fields, and
carry the totals that follow from the previous totals and its amount. So
``fold`` over a stored history is also a full check of it.

Holds: the account keeps its open holds (``holds``, by hold id) and how many
it ever made (``holds_made``, which numbers the next hold id). A hold event is
checked against them: a new hold takes the next id and an expiry after its
event; a capture, release or expiry closes an open hold of the amount it says,
a capture or release before the hold's expiry, an expiry at or after it.
``after.held`` must equal the sum of the open holds and never exceed the balance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .chain import hash_of
from .errors import ChainBroken, IntegrityError, VersionGap
from .events import (
    GENESIS,
    ZERO,
    CreditsAdjusted,
    CreditsHeld,
    CreditsPurchased,
    CreditsUsed,
    Event,
    HoldCaptured,
    HoldExpired,
    HoldReleased,
    Totals,
    UserRegistered,
    hold_id_of,
)
from .money import MAX_CREDITS


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenHold:
    """A hold not yet captured, released or expired."""

    hold_id: str
    credits: int
    expires_at_ms: int
    reason: str = ""
    version: int = 0
    """The version of the event that made it."""
    at_ms: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """One user's state after its latest event; ``head`` is that event's hash.

    ``holds`` (read-only; a new mapping on every change) are the open holds by
    id; ``holds_made`` counts every hold ever made (the next is number + 1)."""

    user_id: str
    email: str
    version: int
    totals: Totals
    head: str
    holds: Mapping[str, OpenHold] = field(default_factory=dict)
    holds_made: int = 0


def next_totals(totals: Totals, event: Event) -> Totals:
    """The totals an event of this kind and amount leads to from ``totals``."""
    if isinstance(event, CreditsPurchased):
        return Totals(
            balance=totals.balance + event.credits,
            purchased=totals.purchased + event.credits,
            used=totals.used,
            held=totals.held,
        )
    if isinstance(event, CreditsUsed):
        return Totals(
            balance=totals.balance - event.credits,
            purchased=totals.purchased,
            used=totals.used + event.credits,
            held=totals.held,
        )
    if isinstance(event, CreditsAdjusted):
        return Totals(
            balance=totals.balance + event.delta,
            purchased=totals.purchased,
            used=totals.used,
            held=totals.held,
        )
    if isinstance(event, CreditsHeld):
        return Totals(
            balance=totals.balance,
            purchased=totals.purchased,
            used=totals.used,
            held=totals.held + event.credits,
        )
    if isinstance(event, HoldCaptured):
        return Totals(
            balance=totals.balance - event.credits,
            purchased=totals.purchased,
            used=totals.used + event.credits,
            held=totals.held - event.hold_credits,
        )
    if isinstance(event, HoldReleased | HoldExpired):
        return Totals(
            balance=totals.balance,
            purchased=totals.purchased,
            used=totals.used,
            held=totals.held - event.hold_credits,
        )
    raise IntegrityError(
        f"user {event.user_id!r}: unexpected {event.kind or 'event'} at version {event.version}"
    )


def _check_amount(event: Event) -> None:
    if isinstance(event, CreditsPurchased | CreditsUsed):
        ok = 0 < event.credits <= MAX_CREDITS
    elif isinstance(event, CreditsAdjusted):
        ok = event.delta != 0 and -MAX_CREDITS <= event.delta <= MAX_CREDITS
    elif isinstance(event, CreditsHeld):
        ok = 0 < event.credits <= MAX_CREDITS
    elif isinstance(event, HoldCaptured):
        ok = 0 < event.credits <= event.hold_credits <= MAX_CREDITS
    elif isinstance(event, HoldReleased | HoldExpired):
        ok = 0 < event.hold_credits <= MAX_CREDITS
    else:
        ok = True
    if not ok:
        raise IntegrityError(
            f"user {event.user_id!r} version {event.version}: "
            f"amount {event.amount} is out of range for {event.kind}"
        )


def _check_totals(event: Event) -> None:
    after = event.after
    if after.balance < 0:
        raise IntegrityError(
            f"user {event.user_id!r} version {event.version}: negative balance {after.balance}"
        )
    if not 0 <= after.held <= after.balance:
        raise IntegrityError(
            f"user {event.user_id!r} version {event.version}: held {after.held} "
            f"is not within the balance {after.balance}"
        )
    if not (
        after.balance <= MAX_CREDITS
        and 0 <= after.purchased <= MAX_CREDITS
        and 0 <= after.used <= MAX_CREDITS
    ):
        raise IntegrityError(
            f"user {event.user_id!r} version {event.version}: a total is out of range"
        )


def apply(account: Account | None, event: Event) -> Account:
    """The account after ``event``.

    Raises ``VersionGap`` when the event is not the next version, ``ChainBroken``
    when it does not link to the head, does not hash to its fields or carries
    totals that do not follow, and ``IntegrityError`` for a history that does not
    start with a registration or that overdraws.
    """
    if account is None:
        if event.version != 1:
            raise VersionGap(event.user_id, 1, event.version)
        if not isinstance(event, UserRegistered):
            raise IntegrityError(
                f"user {event.user_id!r}: history starts with "
                f"{event.kind or 'an event'}, not a registration"
            )
        head, prev, email = GENESIS, ZERO, event.email
    else:
        if event.version != account.version + 1:
            raise VersionGap(account.user_id, account.version + 1, event.version)
        if event.user_id != account.user_id:
            raise ChainBroken(
                account.user_id, event.version, f"event belongs to user {event.user_id!r}"
            )
        if isinstance(event, UserRegistered):
            raise ChainBroken(account.user_id, event.version, "registered a second time")
        head, prev, email = account.head, account.totals, account.email
    if event.prev_hash != head:
        raise ChainBroken(event.user_id, event.version, "does not link to the previous event")
    if hash_of(event) != event.hash:
        raise ChainBroken(event.user_id, event.version, "hash does not match its fields")
    _check_amount(event)
    expected = ZERO if isinstance(event, UserRegistered) else next_totals(prev, event)
    if event.after != expected:
        raise ChainBroken(
            event.user_id, event.version, f"totals {event.after} do not follow from {prev}"
        )
    _check_totals(event)
    holds: Mapping[str, OpenHold] = {} if account is None else account.holds
    made = 0 if account is None else account.holds_made
    if isinstance(event, CreditsHeld):
        holds, made = _opened(holds, made, event)
    elif isinstance(event, HoldCaptured | HoldReleased | HoldExpired):
        holds = _closed(holds, event)
    return Account(
        user_id=event.user_id,
        email=email,
        version=event.version,
        totals=event.after,
        head=event.hash,
        holds=holds,
        holds_made=made,
    )


def _opened(
    holds: Mapping[str, OpenHold], made: int, event: CreditsHeld
) -> tuple[Mapping[str, OpenHold], int]:
    if event.hold_id != hold_id_of(event.user_id, made + 1):
        raise IntegrityError(
            f"user {event.user_id!r} version {event.version}: hold id {event.hold_id!r} "
            f"is not the account's hold number {made + 1}"
        )
    if event.expires_at_ms <= event.at_ms:
        raise IntegrityError(
            f"user {event.user_id!r} version {event.version}: hold expires before it is made"
        )
    hold = OpenHold(
        hold_id=event.hold_id,
        credits=event.credits,
        expires_at_ms=event.expires_at_ms,
        reason=event.reason,
        version=event.version,
        at_ms=event.at_ms,
    )
    return {**holds, event.hold_id: hold}, made + 1


def _closed(
    holds: Mapping[str, OpenHold], event: HoldCaptured | HoldReleased | HoldExpired
) -> Mapping[str, OpenHold]:
    where = f"user {event.user_id!r} version {event.version}"
    hold = holds.get(event.hold_id)
    if hold is None:
        raise IntegrityError(f"{where}: {event.kind} of hold {event.hold_id!r}, which is not open")
    if hold.credits != event.hold_credits:
        raise IntegrityError(
            f"{where}: hold {event.hold_id!r} holds {hold.credits}, not {event.hold_credits}"
        )
    if isinstance(event, HoldExpired):
        if event.at_ms < hold.expires_at_ms:
            raise IntegrityError(f"{where}: hold {event.hold_id!r} expired before its time")
    elif event.at_ms >= hold.expires_at_ms:
        raise IntegrityError(f"{where}: {event.kind} of hold {event.hold_id!r} after it expired")
    return {k: v for k, v in holds.items() if k != event.hold_id}


def fold(events: Iterable[Event]) -> Account | None:
    """Replay one account's events from the start; None for no events."""
    account: Account | None = None
    for event in events:
        account = apply(account, event)
    return account
