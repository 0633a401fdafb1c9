"""Ledger events: what happened to an account, with the state right after it.

Every balance event carries the account's dense per-account ``version`` and the
totals after it (``after``), so a read model can apply "newer version wins" and
never needs the events before it. ``prev_hash``/``hash`` chain each event to the
account's previous one (see ``chain``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

GENESIS = "0" * 40
"""``prev_hash`` of an account's first event."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Totals:
    """An account's running totals. balance = purchased - used + sum(adjustments).

    ``held`` is the sum of the account's open holds: credits reserved, still in
    ``balance``, but not spendable; ``available = balance - held`` (never < 0).
    """

    balance: int = 0
    purchased: int = 0
    used: int = 0
    held: int = 0

    @property
    def available(self) -> int:
        return self.balance - self.held


ZERO = Totals()


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    kind: ClassVar[str] = ""
    user_id: str
    version: int
    at_ms: int
    after: Totals
    prev_hash: str
    hash: str

    @property
    def amount(self) -> int:
        """The signed change this event made to the balance."""
        return 0

    @property
    def text(self) -> str:
        """The event's free-text detail (email, currency or reason)."""
        return ""

    @property
    def ref(self) -> str:
        """An external reference (a purchase's transaction id, a hold's id), else ''."""
        return ""

    @property
    def hold_amount(self) -> int:
        """The credits of the hold this event opens or closes, else 0."""
        return 0

    @property
    def hold_expiry_ms(self) -> int:
        """When the hold this event opens expires (UTC epoch ms), else 0."""
        return 0


@dataclass(frozen=True, slots=True, kw_only=True)
class UserRegistered(Event):
    kind: ClassVar[str] = "user_registered"
    email: str

    @property
    def text(self) -> str:
        return self.email


@dataclass(frozen=True, slots=True, kw_only=True)
class CreditsPurchased(Event):
    kind: ClassVar[str] = "credits_purchased"
    credits: int
    currency: str
    transaction_id: str

    @property
    def amount(self) -> int:
        return self.credits

    @property
    def text(self) -> str:
        return self.currency

    @property
    def ref(self) -> str:
        return self.transaction_id


@dataclass(frozen=True, slots=True, kw_only=True)
class CreditsUsed(Event):
    kind: ClassVar[str] = "credits_used"
    credits: int
    reason: str

    @property
    def amount(self) -> int:
        return -self.credits

    @property
    def text(self) -> str:
        return self.reason


@dataclass(frozen=True, slots=True, kw_only=True)
class CreditsAdjusted(Event):
    kind: ClassVar[str] = "credits_adjusted"
    delta: int
    reason: str

    @property
    def amount(self) -> int:
        return self.delta

    @property
    def text(self) -> str:
        return self.reason


def hold_id_of(user_id: str, number: int) -> str:
    """The id of an account's ``number``-th hold (1, 2, 3 …): ``"<user_id>:h<number>"``.

    Unique in the ledger and tied to its account: a hold id of another account
    never names a hold of this one (the API answers 404 for it).
    """
    return f"{user_id}:h{number}"


def hold_number(user_id: str, hold_id: str) -> int | None:
    """``n`` when ``hold_id`` is ``hold_id_of(user_id, n)`` (n >= 1), else None."""
    prefix = f"{user_id}:h"
    digits = hold_id[len(prefix) :] if hold_id.startswith(prefix) else ""
    if not digits or len(digits) > 15 or not digits.isascii() or not digits.isdigit():
        return None
    if digits[0] == "0":
        return None
    return int(digits)


@dataclass(frozen=True, slots=True, kw_only=True)
class CreditsHeld(Event):
    """A hold: ``credits`` reserved until captured, released or ``expires_at_ms``.

    The balance does not change; ``after.held`` grows by ``credits``.
    """

    kind: ClassVar[str] = "credits_held"
    hold_id: str
    credits: int
    reason: str
    expires_at_ms: int

    @property
    def text(self) -> str:
        return self.reason

    @property
    def ref(self) -> str:
        return self.hold_id

    @property
    def hold_amount(self) -> int:
        return self.credits

    @property
    def hold_expiry_ms(self) -> int:
        return self.expires_at_ms


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldCaptured(Event):
    """``credits`` of the hold are used; the rest (``released``) is released, in one event."""

    kind: ClassVar[str] = "hold_captured"
    hold_id: str
    credits: int
    hold_credits: int

    @property
    def amount(self) -> int:
        return -self.credits

    @property
    def ref(self) -> str:
        return self.hold_id

    @property
    def hold_amount(self) -> int:
        return self.hold_credits

    @property
    def released(self) -> int:
        return self.hold_credits - self.credits


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldReleased(Event):
    """The whole hold is released by its producer; nothing is used."""

    kind: ClassVar[str] = "hold_released"
    hold_id: str
    hold_credits: int

    @property
    def ref(self) -> str:
        return self.hold_id

    @property
    def hold_amount(self) -> int:
        return self.hold_credits


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldExpired(Event):
    """The whole hold is released by the scheduler, at or after its expiry."""

    kind: ClassVar[str] = "hold_expired"
    hold_id: str
    hold_credits: int

    @property
    def ref(self) -> str:
        return self.hold_id

    @property
    def hold_amount(self) -> int:
        return self.hold_credits


HOLD_EVENTS: tuple[type[Event], ...] = (CreditsHeld, HoldCaptured, HoldReleased, HoldExpired)
CLOSING_EVENTS = (HoldCaptured, HoldReleased, HoldExpired)

EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        UserRegistered,
        CreditsPurchased,
        CreditsUsed,
        CreditsAdjusted,
        CreditsHeld,
        HoldCaptured,
        HoldReleased,
        HoldExpired,
    )
}
"""Event class by its ``kind`` string (the ``k`` field of a stream entry)."""
