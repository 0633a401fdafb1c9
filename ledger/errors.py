"""The domain's exceptions.

Every error carries a stable machine code (``code``) and, where it concerns one
input, the offending ``field``; the HTTP edge maps the classes to status codes.

    LedgerError                      code, message
    ├── ValidationError              field            -> 400 / 422
    ├── NotFound
    │   └── UnknownAccount           user_id          -> 404
    ├── Conflict
    │   ├── DuplicateUser            user_id          -> 409
    │   ├── InsufficientCredits      balance          -> 409 "insufficient_credits"
    │   ├── IdempotencyKeyReused     key              -> 409 / 422
    │   ├── TransactionReused        transaction_id   -> 409
    │   └── LimitExceeded                             -> 409
    └── IntegrityError
        ├── VersionGap               user_id, expected, got
        └── ChainBroken              user_id, version
"""

from __future__ import annotations

from typing import ClassVar


class LedgerError(Exception):
    """Root of every domain error."""

    code: ClassVar[str] = "ledger_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(LedgerError):
    """Input that breaks a rule; names the field."""

    code = "invalid"

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


class NotFound(LedgerError):
    code = "not_found"


class UnknownAccount(NotFound):
    code = "unknown_account"

    def __init__(self, user_id: str) -> None:
        super().__init__(f"no account for user {user_id!r}")
        self.user_id = user_id


class Conflict(LedgerError):
    code = "conflict"


class DuplicateUser(Conflict):
    code = "duplicate_user"

    def __init__(self, user_id: str) -> None:
        super().__init__(f"user {user_id!r} is already registered")
        self.user_id = user_id


class InsufficientCredits(Conflict):
    code = "insufficient_credits"

    def __init__(self, user_id: str, balance: int, requested: int) -> None:
        super().__init__(
            f"user {user_id!r} has {balance} credits; {requested} would overdraw the account"
        )
        self.user_id = user_id
        self.balance = balance
        self.requested = requested


class IdempotencyKeyReused(Conflict):
    """The same key came back with a different request."""

    code = "idempotency_key_reused"

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used for a different request")
        self.key = key


class LimitExceeded(Conflict):
    """A total would leave the range the ledger can hold exactly."""

    code = "limit_exceeded"


class IntegrityError(LedgerError):
    code = "integrity_error"


class VersionGap(IntegrityError):
    code = "version_gap"

    def __init__(self, user_id: str, expected: int, got: int) -> None:
        super().__init__(f"user {user_id!r}: expected version {expected}, got {got}")
        self.user_id = user_id
        self.expected = expected
        self.got = got


class ChainBroken(IntegrityError):
    code = "chain_broken"

    def __init__(self, user_id: str, version: int, detail: str) -> None:
        super().__init__(f"user {user_id!r} version {version}: {detail}")
        self.user_id = user_id
        self.version = version


class TransactionReused(Conflict):
    """A purchase's transaction id came back with a different amount or currency."""

    code = "transaction_id_reused"

    def __init__(self, transaction_id: str) -> None:
        super().__init__(
            f"transaction_id {transaction_id!r} was already recorded for a different purchase"
        )
        self.transaction_id = transaction_id
