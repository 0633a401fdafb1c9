"""Every error the project raises on purpose, in one tree.

Each class carries a stable machine code (``code``) and a ``message``; where it
concerns one input, the offending ``field``. The root ``Error`` lets a caller
catch "anything this system refuses or cannot do" in one clause, while
``LedgerError`` stays what it always meant: the domain said no (code that
suppresses or records refusals catches it, and must not swallow an outage).
The HTTP status of each class is in one table, ``api.http.errors.STATUS``.

    Error                                 code, message
    ├── LedgerError                       the domain refused (ledger/)
    │   ├── ValidationError               field                  -> 422 invalid
    │   │   └── PayloadTooLarge           (ledger.tasks)         -> 413
    │   ├── NotFound                                             -> 404
    │   │   ├── UnknownAccount            user_id
    │   │   └── UnknownHold               user_id, hold_id
    │   ├── Conflict                                             -> 409
    │   │   ├── DuplicateUser             user_id
    │   │   ├── InsufficientCredits       balance, available (in the body too)
    │   │   ├── IdempotencyKeyReused      key
    │   │   ├── TransactionReused         transaction_id
    │   │   ├── LimitExceeded
    │   │   ├── HoldNotOpen               user_id, hold_id (captured, released, expired)
    │   │   ├── HoldNotDue                user_id, hold_id (an expiry before the deadline)
    │   │   ├── TooManyHolds              user_id, limit
    │   │   └── DuplicateDocument         (projections.store) collection, doc_id
    │   └── IntegrityError                                       -> 500, own code
    │       ├── VersionGap                user_id, expected, got
    │       └── ChainBroken               user_id, version
    ├── StreamsError                      the stream engine (streams.errors)
    │   ├── Unavailable                   Redis down or refusing -> 503 unavailable
    │   ├── ConfigError                   deployment disagrees   -> 503 misconfigured
    │   │   └── EnvError                  (api.settings) a bad variable: exit code 2
    │   ├── DecodeError                   raw                    -> 500 internal_error
    │   └── UnknownDeadLetter                                    -> 404
    ├── StoreUnavailable                  MongoDB down (projections.store) -> 503 unavailable
    └── ApiError                          the edge's own refusals (api.http.errors)
        ├── BadRequest                                           -> 400 bad_request
        │   └── MalformedJson                                    -> 400 malformed_json
        ├── Unauthorized                  no or unknown API key  -> 401 (WWW-Authenticate)
        ├── Forbidden                     the role is too weak   -> 403
        ├── BodyTooLarge                                         -> 413 payload_too_large
        ├── UnsupportedMediaType                                 -> 415
        └── TooManyWaiters                (api.http.state)       -> 429 too_many_waits

Not errors: ``streams.Retry`` (a handler asks for another attempt: control flow).
Anything else reaching the edge is a 500 ``internal_error`` with a generic message.
"""

from __future__ import annotations

from typing import ClassVar


class Error(Exception):
    """Root of every error in the tree above (named like DB-API's ``Error``)."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class LedgerError(Error):
    """Root of the domain's refusals."""

    code = "ledger_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)


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


class UnknownHold(NotFound):
    """No hold of this id was ever made on this account (another account's id too)."""

    code = "unknown_hold"

    def __init__(self, user_id: str, hold_id: str) -> None:
        super().__init__(f"user {user_id!r} has no hold {hold_id!r}")
        self.user_id = user_id
        self.hold_id = hold_id


class Conflict(LedgerError):
    code = "conflict"


class HoldNotOpen(Conflict):
    """The hold was captured, released or has expired: it can change nothing any more."""

    code = "hold_not_open"

    def __init__(self, user_id: str, hold_id: str) -> None:
        super().__init__(
            f"hold {hold_id!r} of user {user_id!r} is no longer open "
            "(captured, released or expired)"
        )
        self.user_id = user_id
        self.hold_id = hold_id


class HoldNotDue(Conflict):
    """An expiry asked for before the hold's deadline (the scheduler's clock ran ahead)."""

    code = "hold_not_due"

    def __init__(self, user_id: str, hold_id: str) -> None:
        super().__init__(f"hold {hold_id!r} of user {user_id!r} has not reached its expiry")
        self.user_id = user_id
        self.hold_id = hold_id


class TooManyHolds(Conflict):
    """The account already has as many open holds as allowed."""

    code = "too_many_holds"

    def __init__(self, user_id: str, limit: int) -> None:
        super().__init__(
            f"user {user_id!r} already has {limit} open holds (the most allowed); "
            "capture or release one first"
        )
        self.user_id = user_id
        self.limit = limit


class DuplicateUser(Conflict):
    code = "duplicate_user"

    def __init__(self, user_id: str) -> None:
        super().__init__(f"user {user_id!r} is already registered")
        self.user_id = user_id


class InsufficientCredits(Conflict):
    code = "insufficient_credits"

    def __init__(
        self, user_id: str, balance: int, requested: int, available: int | None = None
    ) -> None:
        if available is None or available == balance:
            message = (
                f"user {user_id!r} has {balance} credits; {requested} would overdraw the account"
            )
        else:
            message = (
                f"user {user_id!r} has {available} credits available ({balance} minus "
                f"{balance - available} held); {requested} would overdraw the account"
            )
        super().__init__(message)
        self.user_id = user_id
        self.balance = balance
        self.requested = requested
        self.available = balance if available is None else available


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
