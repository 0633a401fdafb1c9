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
    InsufficientCredits,
    LimitExceeded,
    UnknownAccount,
    ValidationError,
)
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


Command = RegisterUser | Purchase | Use | Adjust

KINDS: Final[Mapping[str, type[Command]]] = {
    "register_user": RegisterUser,
    "purchase": Purchase,
    "use": Use,
    "adjust": Adjust,
}
"""Command class by the ``kind`` that ``parse`` accepts."""

# kind -> (required fields, optional fields), in the order they are checked.
_FIELDS: Final[Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "register_user": (("user_id", "email"), ()),
    "purchase": (("user_id", "amount", "transaction_id"), ("currency",)),
    "use": (("user_id", "amount"), ("reason",)),
    "adjust": (("user_id", "delta", "reason"), ()),
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
    raise ValidationError("kind", f"not a command: {type(command).__name__}")


def check(command: Command) -> Command:
    """A command, or ValidationError for anything else (commands check themselves)."""
    kind_of(command)
    return command


# --- decide ---------------------------------------------------------------------


def _sealed(event: Event) -> Event:
    return replace(event, hash=hash_of(event))


def decide(account: Account | None, command: Command, *, at_ms: int) -> Event:
    """The event ``command`` produces on ``account`` (None = not registered).

    Raises ``DuplicateUser``, ``UnknownAccount``, ``InsufficientCredits`` (a use
    or negative adjustment beyond the balance) or ``LimitExceeded`` (a total
    beyond ``MAX_CREDITS``), in that order of checking, like append.lua.
    """
    if isinstance(at_ms, bool) or not isinstance(at_ms, int) or at_ms < 0:
        raise ValidationError("at_ms", "at_ms must be a non-negative integer")
    command = check(command)
    user_id = command.user_id
    if account is not None and account.user_id != user_id:
        raise ValidationError(
            "user_id", f"command for {user_id!r} applied to account {account.user_id!r}"
        )
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

    before = account.totals
    if isinstance(command, Purchase):
        change, requested = command.amount, 0
        after = Totals(
            balance=before.balance + change, purchased=before.purchased + change, used=before.used
        )
    elif isinstance(command, Use):
        change, requested = -command.amount, command.amount
        after = Totals(
            balance=before.balance + change,
            purchased=before.purchased,
            used=before.used + command.amount,
        )
    else:
        change, requested = command.delta, -command.delta
        after = Totals(
            balance=before.balance + change, purchased=before.purchased, used=before.used
        )
    if after.balance < 0:
        raise InsufficientCredits(user_id, before.balance, requested)
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


def apply_command(
    account: Account | None, command: Command, *, at_ms: int
) -> tuple[Account, Event]:
    """Decide and apply in one step: the new account and the event it took."""
    event = decide(account, command, at_ms=at_ms)
    return apply(account, event), event
