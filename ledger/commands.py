"""Commands: what a producer asks for, checked strictly, and decided purely.

``parse(kind, body)`` turns an untrusted mapping (a JSON body, a batch item)
into a command, or raises ``ValidationError`` naming the offending field:
unknown fields, missing fields, wrong types (``True`` is not a number, ``5.0``
is not a number of credits) and out-of-range values are all refused.

``decide(account, command, at_ms=...)`` is the Python twin of
``streams/lua/append.lua``: same checks in the same order (registration on an
existing account, unknown account, overdraft, limits), same version, totals and
hash. It never looks at a clock; the caller passes ``at_ms``.

The limits below are exported because the HTTP schemas and the Lua script
enforce the very same ones.

Holds (``Hold``, ``Capture``, ``Release``, ``Expire``): a hold reserves
credits of the available amount (``balance - held``) until it is captured (all
or part: the part is used, the rest released, in one event), released, or
expired by the scheduler (``Expire``, at or after its deadline). A use or a
negative adjustment is checked against the available amount, not the balance.
Two limits are the deployment's (``HoldLimits``, passed to ``decide``; the
append script gets the same numbers): at most ``max_open`` open holds per
account (one more: ``TooManyHolds``, HTTP 409: the request is valid and will
succeed once a hold closes) and an ``expires_in_s`` of at most ``max_expiry_s``
(beyond: ``ValidationError`` on ``expires_in_s``, HTTP 422). ``MAX_HOLD_EXPIRY_S``
(366 days) bounds every configuration.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

from .accounts import Account, apply
from .chain import hash_of
from .errors import (
    DuplicateUser,
    HoldNotDue,
    HoldNotOpen,
    InsufficientCredits,
    LimitExceeded,
    TooManyHolds,
    UnknownAccount,
    UnknownHold,
    ValidationError,
)
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
    hold_number,
)
from .money import MAX_CREDITS, check_amount, check_delta

USER_ID_PATTERN: Final = r"^[A-Za-z0-9._@:-]{1,128}$"
TRANSACTION_ID_PATTERN: Final = r"^[A-Za-z0-9._:-]{1,128}$"
CURRENCY_PATTERN: Final = r"^[A-Z]{3}$"
USER_ID_RE: Final = re.compile(USER_ID_PATTERN)
TRANSACTION_ID_RE: Final = re.compile(TRANSACTION_ID_PATTERN)
CURRENCY_RE: Final = re.compile(CURRENCY_PATTERN)
CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
"""Control characters, refused in every free-text field."""
MAX_EMAIL: Final = 254
MAX_REASON: Final = 500
DEFAULT_CURRENCY: Final = "USD"
HOLD_ID_PATTERN: Final = r"^[A-Za-z0-9._@:-]{1,128}:h[1-9][0-9]{0,14}$"
HOLD_ID_RE: Final = re.compile(HOLD_ID_PATTERN)
MAX_HOLD_EXPIRY_S: Final = 366 * 24 * 3600
"""No configuration may let a hold live longer than this (a year and a day)."""
DEFAULT_MAX_HOLD_EXPIRY_S: Final = 7 * 24 * 3600
"""A hold's longest life unless configured (``LEDGER_MAX_HOLD_EXPIRY_S``): 7 days."""
DEFAULT_MAX_OPEN_HOLDS: Final = 100
"""Open holds per account unless configured (``LEDGER_MAX_OPEN_HOLDS``)."""
MAX_OPEN_HOLDS: Final = 10_000
"""No configuration may allow more open holds per account than this."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldLimits:
    """The deployment's hold limits (``StreamsConfig`` carries them from the env)."""

    max_open: int = DEFAULT_MAX_OPEN_HOLDS
    max_expiry_s: int = DEFAULT_MAX_HOLD_EXPIRY_S

    def __post_init__(self) -> None:
        for name, value, hi in (
            ("max_open", self.max_open, MAX_OPEN_HOLDS),
            ("max_expiry_s", self.max_expiry_s, MAX_HOLD_EXPIRY_S),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
                raise ValidationError(name, f"{name} must be a whole number in 1..{hi}")

    def check_expiry(self, expires_in_s: int) -> int:
        """``expires_in_s`` if this deployment allows it, else ValidationError (422)."""
        if expires_in_s > self.max_expiry_s:
            raise ValidationError(
                "expires_in_s", f"expires_in_s must be at most {self.max_expiry_s} seconds"
            )
        return expires_in_s


DEFAULT_HOLD_LIMITS: Final = HoldLimits()


# Commands check their fields when built (``__post_init__``), so a command that
# exists is valid: ``parse`` builds them from untrusted bodies, code builds them
# directly, and nothing needs to check one twice.


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterUser:
    user_id: str
    email: str

    def __post_init__(self) -> None:
        check_user_id(self.user_id)
        check_email(self.email)


@dataclass(frozen=True, slots=True, kw_only=True)
class Purchase:
    user_id: str
    amount: int
    currency: str = DEFAULT_CURRENCY
    transaction_id: str

    def __post_init__(self) -> None:
        check_user_id(self.user_id)
        check_amount(self.amount, "amount")
        check_transaction_id(self.transaction_id)
        check_currency(self.currency)


@dataclass(frozen=True, slots=True, kw_only=True)
class Use:
    user_id: str
    amount: int
    reason: str = ""

    def __post_init__(self) -> None:
        check_user_id(self.user_id)
        check_amount(self.amount, "amount")
        check_reason(self.reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class Adjust:
    user_id: str
    delta: int
    reason: str

    def __post_init__(self) -> None:
        check_user_id(self.user_id)
        check_delta(self.delta, "delta")
        check_reason(self.reason, required=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Hold:
    """Reserve ``amount`` of the available credits for ``expires_in_s`` seconds."""

    user_id: str
    amount: int
    reason: str = ""
    expires_in_s: int

    def __post_init__(self) -> None:
        check_user_id(self.user_id)
        check_amount(self.amount, "amount")
        check_reason(self.reason)
        check_expires_in(self.expires_in_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class Capture:
    """Use ``amount`` of an open hold (None: all of it) and release the rest."""

    user_id: str
    hold_id: str
    amount: int | None = None

    def __post_init__(self) -> None:
        check_user_id(self.user_id)
        check_hold_id(self.hold_id)
        if self.amount is not None:
            check_amount(self.amount, "amount")


@dataclass(frozen=True, slots=True, kw_only=True)
class Release:
    """Release the whole of an open hold."""

    user_id: str
    hold_id: str

    def __post_init__(self) -> None:
        check_user_id(self.user_id)
        check_hold_id(self.hold_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class Expire:
    """Release an open hold whose deadline has passed (the scheduler's command)."""

    user_id: str
    hold_id: str

    def __post_init__(self) -> None:
        check_user_id(self.user_id)
        check_hold_id(self.hold_id)


Command = RegisterUser | Purchase | Use | Adjust | Hold | Capture | Release | Expire
HoldCommand = Hold | Capture | Release | Expire

KINDS: Final[Mapping[str, type[Command]]] = {
    "register_user": RegisterUser,
    "purchase": Purchase,
    "use": Use,
    "adjust": Adjust,
    "hold": Hold,
    "capture": Capture,
    "release": Release,
}
"""Command class by the ``kind`` that ``parse`` accepts (``Expire`` is not a request)."""
"""Command class by the ``kind`` that ``parse`` accepts."""

# kind -> (required fields, optional fields), in the order they are checked.
_FIELDS: Final[Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "register_user": (("user_id", "email"), ()),
    "purchase": (("user_id", "amount", "transaction_id"), ("currency",)),
    "use": (("user_id", "amount"), ("reason",)),
    "adjust": (("user_id", "delta", "reason"), ()),
    "hold": (("user_id", "amount", "expires_in_s"), ("reason",)),
    "capture": (("user_id", "hold_id"), ("amount",)),
    "release": (("user_id", "hold_id"), ()),
}


# --- field checks ---------------------------------------------------------------


def _text(value: object, field: str, max_len: int) -> str:
    if not isinstance(value, str):
        raise ValidationError(field, f"{field} must be a string")
    if len(value) > max_len:
        raise ValidationError(field, f"{field} is longer than {max_len} characters")
    if CONTROL_RE.search(value):
        raise ValidationError(field, f"{field} must not contain control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(field, f"{field} is not valid unicode text") from None
    return str(value)


def _matching(value: object, field: str, pattern: re.Pattern[str], rule: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(field, f"{field} must be a string")
    if not pattern.fullmatch(value):
        raise ValidationError(field, f"{field} must be {rule}")
    return str(value)


def check_user_id(value: object, field: str = "user_id") -> str:
    """1-128 of ``A-Z a-z 0-9 . _ @ : -``."""
    return _matching(value, field, USER_ID_RE, "1-128 of the characters A-Z a-z 0-9 . _ @ : -")


def check_transaction_id(value: object, field: str = "transaction_id") -> str:
    return _matching(value, field, TRANSACTION_ID_RE, "1-128 of the characters A-Z a-z 0-9 . _ : -")


def check_currency(value: object, field: str = "currency") -> str:
    return _matching(value, field, CURRENCY_RE, "a three-letter upper-case code such as USD")


def check_email(value: object, field: str = "email") -> str:
    """At most 254 characters, one ``@`` between non-empty parts, no whitespace."""
    email = _text(value, field, MAX_EMAIL)
    local, at, domain = email.partition("@")
    if not at or not local or not domain or "@" in domain:
        raise ValidationError(field, f"{field} must look like name@domain")
    if any(c.isspace() for c in email):
        raise ValidationError(field, f"{field} must not contain whitespace")
    return email


def check_reason(value: object, field: str = "reason", *, required: bool = False) -> str:
    """Free text of at most 500 characters; ``required`` also refuses a blank one."""
    reason = _text(value, field, MAX_REASON)
    if required and not reason.strip():
        raise ValidationError(field, f"{field} is required")
    return reason


def check_hold_id(value: object, field: str = "hold_id") -> str:
    """``<user_id>:h<n>`` as ``ledger.events.hold_id_of`` makes them."""
    return _matching(value, field, HOLD_ID_RE, "a hold id such as alice:h1")


def check_expires_in(value: object, field: str = "expires_in_s") -> int:
    """Whole seconds in ``1..MAX_HOLD_EXPIRY_S`` (the deployment may allow fewer)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, f"{field} must be a whole number of seconds")
    if not 1 <= value <= MAX_HOLD_EXPIRY_S:
        raise ValidationError(field, f"{field} must be between 1 and {MAX_HOLD_EXPIRY_S}")
    return value


# --- parse ----------------------------------------------------------------------


def parse(kind: str, body: Mapping[str, object]) -> Command:
    """The command ``kind`` described by ``body``, or ``ValidationError(field=...)``."""
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise ValidationError("kind", f"kind must be one of {', '.join(_FIELDS)}")
    if not isinstance(body, Mapping):
        raise ValidationError(None, "the body must be a JSON object")
    required, optional = _FIELDS[kind]
    for key in body:
        if not isinstance(key, str) or (key not in required and key not in optional):
            raise ValidationError(str(key), f"unknown field {str(key)!r}")
    for name in required:
        if name not in body:
            raise ValidationError(name, f"{name} is required")
    values = dict(body)
    if kind == "purchase":
        values.setdefault("currency", DEFAULT_CURRENCY)
    return KINDS[kind](**values)  # type: ignore[arg-type]  # the class checks every field


def kind_of(command: Command) -> str:
    """The ``parse`` kind of a command (``"purchase"`` for a ``Purchase`` …)."""
    for kind, cls in KINDS.items():
        if type(command) is cls:
            return kind
    if type(command) is Expire:
        return "expire"
    raise ValidationError("kind", f"not a command: {type(command).__name__}")


def check(command: Command) -> Command:
    """A command, or ValidationError for anything else (commands check themselves)."""
    kind_of(command)
    return command


# --- decide ---------------------------------------------------------------------


def _sealed(event: Event) -> Event:
    return replace(event, hash=hash_of(event))


def decide(
    account: Account | None,
    command: Command,
    *,
    at_ms: int,
    limits: HoldLimits = DEFAULT_HOLD_LIMITS,
) -> Event:
    """The event ``command`` produces on ``account`` (None = not registered).

    Raises ``DuplicateUser``, ``UnknownAccount``, ``InsufficientCredits`` (a use
    or negative adjustment beyond the available credits) or ``LimitExceeded`` (a
    total beyond ``MAX_CREDITS``), in that order of checking, like append.lua.
    Holds check, in order: the account; ``limits`` (expiry: ``ValidationError``;
    open holds: ``TooManyHolds``); the available credits. A capture, release or
    expiry checks the account, then ``UnknownHold`` (never made on this
    account), ``HoldNotOpen`` (closed, or past its expiry for a capture or
    release), ``HoldNotDue`` (an expiry before the deadline), then a capture's
    amount (``ValidationError`` beyond the hold) and ``LimitExceeded``.
    """
    if isinstance(at_ms, bool) or not isinstance(at_ms, int) or at_ms < 0:
        raise ValidationError("at_ms", "at_ms must be a non-negative integer")
    command = check(command)
    user_id = command.user_id
    if account is not None and account.user_id != user_id:
        raise ValidationError(
            "user_id", f"command for {user_id!r} applied to account {account.user_id!r}"
        )
    if isinstance(command, Hold):
        limits.check_expiry(command.expires_in_s)
    if isinstance(command, RegisterUser):
        if account is not None:
            raise DuplicateUser(user_id)
        return _sealed(
            UserRegistered(
                user_id=user_id,
                version=1,
                at_ms=at_ms,
                after=ZERO,
                prev_hash=GENESIS,
                hash="",
                email=command.email,
            )
        )
    if account is None:
        raise UnknownAccount(user_id)
    if isinstance(command, Hold | Capture | Release | Expire):
        return _sealed(_decide_hold(account, command, at_ms, limits))

    before = account.totals
    if isinstance(command, Purchase):
        change, requested = command.amount, 0
        after = Totals(
            balance=before.balance + change,
            purchased=before.purchased + change,
            used=before.used,
            held=before.held,
        )
    elif isinstance(command, Use):
        change, requested = -command.amount, command.amount
        after = Totals(
            balance=before.balance + change,
            purchased=before.purchased,
            used=before.used + command.amount,
            held=before.held,
        )
    else:
        change, requested = command.delta, -command.delta
        after = Totals(
            balance=before.balance + change,
            purchased=before.purchased,
            used=before.used,
            held=before.held,
        )
    if after.balance < before.held:
        raise InsufficientCredits(user_id, before.balance, requested, before.available)
    if max(after.balance, after.purchased, after.used) > MAX_CREDITS:
        raise LimitExceeded(f"user {user_id!r}: a total would exceed {MAX_CREDITS} credits")

    version, head = account.version + 1, account.head
    event: Event
    if isinstance(command, Purchase):
        event = CreditsPurchased(
            user_id=user_id,
            version=version,
            at_ms=at_ms,
            after=after,
            prev_hash=head,
            hash="",
            credits=command.amount,
            currency=command.currency,
            transaction_id=command.transaction_id,
        )
    elif isinstance(command, Use):
        event = CreditsUsed(
            user_id=user_id,
            version=version,
            at_ms=at_ms,
            after=after,
            prev_hash=head,
            hash="",
            credits=command.amount,
            reason=command.reason,
        )
    else:
        event = CreditsAdjusted(
            user_id=user_id,
            version=version,
            at_ms=at_ms,
            after=after,
            prev_hash=head,
            hash="",
            delta=command.delta,
            reason=command.reason,
        )
    return _sealed(event)


def _decide_hold(account: Account, command: HoldCommand, at_ms: int, limits: HoldLimits) -> Event:
    """The (unsealed) hold event of ``command``; the checks as ``decide`` lists them."""
    user_id, before = account.user_id, account.totals
    version, head = account.version + 1, account.head
    if isinstance(command, Hold):
        if len(account.holds) >= limits.max_open:
            raise TooManyHolds(user_id, limits.max_open)
        if command.amount > before.available:
            raise InsufficientCredits(user_id, before.balance, command.amount, before.available)
        return CreditsHeld(
            user_id=user_id,
            version=version,
            at_ms=at_ms,
            after=replace(before, held=before.held + command.amount),
            prev_hash=head,
            hash="",
            hold_id=hold_id_of(user_id, account.holds_made + 1),
            credits=command.amount,
            reason=command.reason,
            expires_at_ms=at_ms + command.expires_in_s * 1000,
        )
    number = hold_number(user_id, command.hold_id)
    if number is None or number > account.holds_made:
        raise UnknownHold(user_id, command.hold_id)
    hold = account.holds.get(command.hold_id)
    if hold is None:
        raise HoldNotOpen(user_id, command.hold_id)
    if isinstance(command, Expire):
        if at_ms < hold.expires_at_ms:
            raise HoldNotDue(user_id, command.hold_id)
    elif at_ms >= hold.expires_at_ms:
        raise HoldNotOpen(user_id, command.hold_id)
    released = replace(before, held=before.held - hold.credits)
    common = dict(user_id=user_id, version=version, at_ms=at_ms, prev_hash=head, hash="")
    if isinstance(command, Capture):
        credits = hold.credits if command.amount is None else command.amount
        if credits > hold.credits:
            raise ValidationError(
                "amount", f"amount {credits} is more than the {hold.credits} credits held"
            )
        if before.used + credits > MAX_CREDITS:
            raise LimitExceeded(f"user {user_id!r}: a total would exceed {MAX_CREDITS} credits")
        return HoldCaptured(
            **common,  # type: ignore[arg-type]
            after=replace(released, balance=before.balance - credits, used=before.used + credits),
            hold_id=command.hold_id,
            credits=credits,
            hold_credits=hold.credits,
        )
    cls = HoldExpired if isinstance(command, Expire) else HoldReleased
    return cls(**common, after=released, hold_id=command.hold_id, hold_credits=hold.credits)  # type: ignore[arg-type]


def apply_command(
    account: Account | None,
    command: Command,
    *,
    at_ms: int,
    limits: HoldLimits = DEFAULT_HOLD_LIMITS,
) -> tuple[Account, Event]:
    """Decide and apply in one step: the new account and the event it took."""
    event = decide(account, command, at_ms=at_ms, limits=limits)
    return apply(account, event), event
