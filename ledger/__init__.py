"""The pure domain of the credit ledger: events, accounts, commands, rules.

Standard library only: no I/O, no clocks, no environment. ``decide`` turns a
command into an event, ``apply``/``fold`` turn events into account state, and
``chain`` proves a history has not been changed.
"""

from __future__ import annotations

from .accounts import Account, apply, fold
from .chain import canonical, hash_of, link, verify
from .commands import (
    Adjust,
    Command,
    Purchase,
    RegisterUser,
    Use,
    apply_command,
    decide,
    parse,
)
from .errors import (
    ChainBroken,
    Conflict,
    DuplicateUser,
    IdempotencyKeyReused,
    InsufficientCredits,
    IntegrityError,
    LedgerError,
    LimitExceeded,
    NotFound,
    TransactionReused,
    UnknownAccount,
    ValidationError,
    VersionGap,
)
from .events import (
    EVENT_TYPES,
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
from .scores import credit_score
from .tasks import (
    DEFAULT_COLLECTIONS,
    READ_MODEL_COLLECTIONS,
    CheckedTask,
    DbTask,
    PayloadTooLarge,
    Priority,
    Task,
    allowed_collections,
    check_db_task,
    check_task,
    check_task_data,
)

__all__ = [
    "DEFAULT_COLLECTIONS",
    "EVENT_TYPES",
    "GENESIS",
    "MAX_CREDITS",
    "READ_MODEL_COLLECTIONS",
    "ZERO",
    "Account",
    "Adjust",
    "ChainBroken",
    "CheckedTask",
    "Command",
    "Conflict",
    "CreditsAdjusted",
    "CreditsPurchased",
    "CreditsUsed",
    "DbTask",
    "DuplicateUser",
    "Event",
    "IdempotencyKeyReused",
    "InsufficientCredits",
    "IntegrityError",
    "LedgerError",
    "LimitExceeded",
    "NotFound",
    "PayloadTooLarge",
    "Priority",
    "Purchase",
    "RegisterUser",
    "Task",
    "Totals",
    "TransactionReused",
    "UnknownAccount",
    "Use",
    "UserRegistered",
    "ValidationError",
    "VersionGap",
    "allowed_collections",
    "apply",
    "apply_command",
    "canonical",
    "check_amount",
    "check_db_task",
    "check_delta",
    "check_task",
    "check_task_data",
    "credit_score",
    "decide",
    "fold",
    "hash_of",
    "link",
    "parse",
    "verify",
]
