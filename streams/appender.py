"""Appending ledger events: one atomic script call per event.

The script (``lua/append.lua``) checks the idempotency key and the purchase's
transaction id, the account, the overdraft and the limits, then computes the
version, totals and hash and XADDs the event — all in one step in Redis.
Batches are pipelined: each event is still its own atomic step.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ledger.commands import Adjust, Command, Purchase, RegisterUser, Use
from ledger.errors import (
    DuplicateUser,
    IdempotencyKeyReused,
    InsufficientCredits,
    LedgerError,
    LimitExceeded,
    TransactionReused,
    UnknownAccount,
    ValidationError,
)
from ledger.money import MAX_CREDITS
from ledger.tasks import Priority

from . import keys
from .config import StreamsConfig
from .connection import RedisClient, translate
from .errors import Unavailable
from .scripts import Scripts, load, run_many

IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Appended:
    event_id: str
    """"<user_id>:<version>"."""
    user_id: str
    version: int
    balance: int
    duplicate: bool = False


def check_idempotency_key(key: object) -> str:
    """1-255 visible ASCII characters."""
    if not isinstance(key, str) or not IDEMPOTENCY_KEY_RE.match(key):
        raise ValidationError("Idempotency-Key", "Idempotency-Key must be 1-255 visible ASCII "
                              "characters")
    return key


def _lua_args(command: Command) -> tuple[str, int, str, str]:
    """(kind, signed amount, text, ref) as append.lua takes them."""
    if isinstance(command, RegisterUser):
        return "user_registered", 0, command.email, ""
    if isinstance(command, Purchase):
        return "credits_purchased", command.amount, command.currency, command.transaction_id
    if isinstance(command, Use):
        return "credits_used", -command.amount, command.reason, ""
    if isinstance(command, Adjust):
        return "credits_adjusted", command.delta, command.reason, ""
    raise ValidationError("kind", f"not a ledger command: {type(command).__name__}")


def fingerprint(kind: str, user_id: str, amount: int, text: str, ref: str) -> str:
    """What makes two appends the same request (compared on a repeated key)."""
    raw = "\x1f".join((kind, user_id, str(amount), text, ref)).encode("utf-8")
    return hashlib.sha1(raw).hexdigest()


class Appender:
    """Appends ledger commands as events to the partition's priority stream."""

    def __init__(self, client: RedisClient, config: StreamsConfig,
                 scripts: Scripts | None = None) -> None:
        self._redis = client
        self._config = config
        self._scripts = scripts or load(client)

    def append_many(
        self, items: Sequence[tuple[Command, Priority, str | None]]
    ) -> list[Appended | LedgerError]:
        """Append many events in one round trip; one result (or refusal) per item.

        Events are grouped by partition, one script call per partition, in the
        order given; each call is atomic, so each event is too.
        """
        groups: dict[int, tuple[list[str], list[Any], list[int]]] = {}
        calls: list[tuple[Command, str | None]] = []
        for index, (command, priority, idem) in enumerate(items):
            if idem is not None:
                check_idempotency_key(idem)
            kind, amount, text, ref = _lua_args(command)
            user = command.user_id
            p = keys.partition_of(user, self._config.partitions)
            group = groups.setdefault(p, ([], [self._config.idempotency_ttl_s, MAX_CREDITS],
                                          []))
            group[0].extend((keys.account(p, user), keys.stream(p, Priority(priority)),
                             keys.idempotency(p, user, idem or "-"),
                             keys.transactions(p, user)))
            group[1].extend((kind, user, amount, text, ref, "1" if idem else "0",
                             fingerprint(kind, user, amount, text, ref),
                             self._config.queue_for(priority)))
            group[2].append(index)
            calls.append((command, idem))
        if not calls:
            return []
        with translate():
            replies = run_many(self._redis, [(self._scripts.append, script_keys, args)
                                             for script_keys, args, _ in groups.values()])
            if self._config.wait_replicas:
                acked = self._redis.wait(self._config.wait_replicas,
                                         self._config.wait_timeout_ms)
                if acked < self._config.wait_replicas:
                    raise Unavailable(
                        f"appended, but only {acked} of {self._config.wait_replicas} replicas "
                        "confirmed in time; retry with the same Idempotency-Key"
                    )
        results: list[Appended | LedgerError | None] = [None] * len(calls)
        for (_, _, indexes), group_replies in zip(groups.values(), replies, strict=True):
            for index, reply in zip(indexes, group_replies, strict=True):
                command, idem = calls[index]
                results[index] = _result(command, idem, reply)
        return [r for r in results if r is not None]


def _result(command: Command, idem: str | None, reply: list[bytes]) -> Appended | LedgerError:
    status = reply[0].decode()
    user = command.user_id
    if status in ("ok", "dup"):
        return Appended(event_id=reply[1].decode(), user_id=user, version=int(reply[2]),
                        balance=int(reply[3]), duplicate=status == "dup")
    if status == "insufficient":
        requested = command.amount if isinstance(command, Use) else -getattr(command, "delta", 0)
        return InsufficientCredits(user, int(reply[1]), requested)
    if status == "unknown_account":
        return UnknownAccount(user)
    if status == "duplicate_user":
        return DuplicateUser(user)
    if status == "limit":
        return LimitExceeded(f"the totals of {user!r} would exceed {MAX_CREDITS} credits")
    if status == "reused":
        if reply[1] == b"transaction" and isinstance(command, Purchase):
            return TransactionReused(command.transaction_id)
        return IdempotencyKeyReused(idem or "")
    raise Unavailable(f"unexpected reply from append script: {status!r}")
