"""Appending ledger events: one atomic script call per event.

The script (``lua/append.lua``) checks the idempotency key and the purchase's
transaction id, the account, the overdraft and the limits, then computes the
version, totals and hash and XADDs the event — all in one step in Redis.
Batches are pipelined, up to ``CHUNK`` events of one partition per script
call; each event is still decided on its own, atomically.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

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
from .scripts import Call, ScriptArg, Scripts, load, run_many

IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
CHUNK = 32
"""Events per script call: big enough to spread the call's cost, small enough
that Redis starts on a batch while the client still builds the rest."""


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
        raise ValidationError(
            "Idempotency-Key", "Idempotency-Key must be 1-255 visible ASCII characters"
        )
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

    def __init__(
        self, client: RedisClient, config: StreamsConfig, scripts: Scripts | None = None
    ) -> None:
        self._redis = client
        self._config = config
        self._scripts = scripts or load(client)

    def append_many(
        self, items: Sequence[tuple[Command, Priority, str | None]]
    ) -> list[Appended | LedgerError]:
        """Append many events in one round trip; one result (or refusal) per item.

        Events are grouped by partition into script calls of up to ``CHUNK``
        events, in the order given; each call is atomic, so each event is too.
        A call is sent as soon as it is full, so Redis works on it while the
        rest of the batch is built. Everything is checked before the first call
        goes out: a bad item raises with nothing appended.

        With ``wait_replicas`` the batch is answered only once that many
        replicas of every node it was written on confirmed it (``WAIT`` on the
        connections the calls went through); else ``Unavailable``: what was
        appended stays, and a retry with the same idempotency keys finds it.
        """
        args = []
        for command, _, idem in items:
            if idem is not None:
                check_idempotency_key(idem)
            args.append(_lua_args(command))
        if not items:
            return []
        batches: list[list[int]] = []
        results: list[Appended | LedgerError | None] = [None] * len(items)

        def settle(call: int, replies: list[list[bytes]]) -> None:
            for index, reply in zip(batches[call], replies, strict=True):
                command, _, idem = items[index]
                results[index] = _result(command, idem, reply)

        with translate():
            run_many(self._redis, self._calls(items, args, batches), settle, wait=self._config.wait)
        return [r for r in results if r is not None]

    def _calls(
        self,
        items: Sequence[tuple[Command, Priority, str | None]],
        args: Sequence[tuple[str, int, str, str]],
        batches: list[list[int]],
    ) -> Iterator[Call]:
        """The script calls for ``items``, each yielded when full; ``batches``
        receives the item indexes of each call, in the order yielded.

        A call holds events of one partition and one priority; an event of
        another priority closes its partition's open call first, so the events
        of a partition run in the order given.
        """
        partitions, config = self._config.partitions, self._config
        open_: dict[int, tuple[Priority, list[str], list[ScriptArg], list[int]]] = {}

        def close(call: tuple[Priority, list[str], list[ScriptArg], list[int]]) -> Call:
            batches.append(call[3])
            return self._scripts.append, call[1], call[2]

        for index, (command, priority, idem) in enumerate(items):
            kind, amount, text, ref = args[index]
            user = command.user_id
            p = keys.partition_of(user, partitions)
            if p in open_ and open_[p][0] != priority:
                yield close(open_.pop(p))
            call = open_.get(p)
            if call is None:
                call = open_[p] = (
                    priority,
                    [keys.stream(p, priority)],
                    [config.idempotency_ttl_s, MAX_CREDITS, config.queue_for(priority)],
                    [],
                )
            call[1].append(keys.account(p, user))
            if idem:
                call[1].append(keys.idempotency(p, user, idem))
            if ref:
                call[1].append(keys.transactions(p, user))
            fp = fingerprint(kind, user, amount, text, ref) if idem or ref else ""
            call[2].extend((kind, user, amount, text, ref, "1" if idem else "0", fp))
            call[3].append(index)
            if len(call[3]) >= min(CHUNK, 4 << len(batches)):  # the first calls small,
                yield close(open_.pop(p))  # so Redis starts at once
        for call in open_.values():
            yield close(call)


def _result(command: Command, idem: str | None, reply: list[bytes]) -> Appended | LedgerError:
    status = reply[0].decode()
    user = command.user_id
    if status == "ok":
        version = reply[1].decode()
        return Appended(
            event_id=f"{user}:{version}", user_id=user, version=int(version), balance=int(reply[2])
        )
    if status == "dup":
        return Appended(
            event_id=reply[1].decode(),
            user_id=user,
            version=int(reply[2]),
            balance=int(reply[3]),
            duplicate=True,
        )
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
