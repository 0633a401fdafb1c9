"""An account is the fold of its events.

``apply`` is the only way state changes, and it trusts nothing: each event must
carry the next version, link to the account's head, hash to its own fields, and
carry the totals that follow from the previous totals and its amount. So
``fold`` over a stored history is also a full check of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .chain import hash_of
from .errors import ChainBroken, IntegrityError, VersionGap
from .events import (
    GENESIS,
    ZERO,
    CreditsAdjusted,
    CreditsPurchased,
    CreditsUsed,
    Event,
    Totals,
    UserRegistered,
)
from .money import MAX_CREDITS


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """One user's state after its latest event; ``head`` is that event's hash."""

    user_id: str
    email: str
    version: int
    totals: Totals
    head: str


def next_totals(totals: Totals, event: Event) -> Totals:
    """The totals an event of this kind and amount leads to from ``totals``."""
    if isinstance(event, CreditsPurchased):
        return Totals(
            balance=totals.balance + event.credits,
            purchased=totals.purchased + event.credits,
            used=totals.used,
        )
    if isinstance(event, CreditsUsed):
        return Totals(
            balance=totals.balance - event.credits,
            purchased=totals.purchased,
            used=totals.used + event.credits,
        )
    if isinstance(event, CreditsAdjusted):
        return Totals(
            balance=totals.balance + event.delta, purchased=totals.purchased, used=totals.used
        )
    raise IntegrityError(
        f"user {event.user_id!r}: unexpected {event.kind or 'event'} at version {event.version}"
    )


def _check_amount(event: Event) -> None:
    if isinstance(event, CreditsPurchased | CreditsUsed):
        ok = 0 < event.credits <= MAX_CREDITS
    elif isinstance(event, CreditsAdjusted):
        ok = event.delta != 0 and -MAX_CREDITS <= event.delta <= MAX_CREDITS
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
    return Account(
        user_id=event.user_id,
        email=email,
        version=event.version,
        totals=event.after,
        head=event.hash,
    )


def fold(events: Iterable[Event]) -> Account | None:
    """Replay one account's events from the start; None for no events."""
    account: Account | None = None
    for event in events:
        account = apply(account, event)
    return account
