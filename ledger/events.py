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
    """An account's running totals. balance = purchased - used + sum(adjustments)."""

    balance: int = 0
    purchased: int = 0
    used: int = 0


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
        """An external reference (a purchase's transaction id), else ''."""
        return ""


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


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls for cls in (UserRegistered, CreditsPurchased, CreditsUsed, CreditsAdjusted)
}
"""Event class by its ``kind`` string (the ``k`` field of a stream entry)."""
