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
from dataclasses import dataclass, fields

from ledger.commands import (
    Adjust,
    Capture,
    Command,
    Expire,
    Hold,
    Purchase,
    RegisterUser,
    Release,
    Use,
)
from ledger.errors import (
    DuplicateUser,
    HoldNotDue,
    HoldNotOpen,
    IdempotencyKeyReused,
    InsufficientCredits,
    LedgerError,
    LimitExceeded,
    TooManyHolds,
    TransactionReused,
    UnknownAccount,
    UnknownHold,
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
    held: int = 0
    """The account's held credits after the event (available = balance - held)."""
    hold_id: str = ""
    """The hold a hold event made, captured, released or expired; else ""."""

    @property
    def available(self) -> int:
        return self.balance - self.held


def check_idempotency_key(key: object) -> str:
    """1-255 visible ASCII characters."""
    if not isinstance(key, str) or not IDEMPOTENCY_KEY_RE.match(key):
        raise ValidationError(
            "Idempotency-Key", "Idempotency-Key must be 1-255 visible ASCII characters"
        )
    return key


SEP = "\x1f"
"""Separates an event's fields in its one script argument (see append.lua)."""


HOLD_KINDS = frozenset({"credits_held", "hold_captured", "hold_released", "hold_expired"})

LuaArgs = tuple[str, int, str, str, str]


def _lua_args(command: Command) -> LuaArgs:
    """(kind, amount, text, ref, extra) as append.lua takes them."""
    args: LuaArgs
    if isinstance(command, Hold):
        args = "credits_held", command.amount, command.reason, "", str(command.expires_in_s)
    elif isinstance(command, Capture):
        args = "hold_captured", command.amount or 0, "", command.hold_id, ""
    elif isinstance(command, Release):
        args = "hold_released", 0, "", command.hold_id, ""
    elif isinstance(command, Expire):
        args = "hold_expired", 0, "", command.hold_id, ""
    elif isinstance(command, RegisterUser):
        args = "user_registered", 0, command.email, "", ""
    elif isinstance(command, Purchase):
        args = "credits_purchased", command.amount, command.currency, command.transaction_id, ""
    elif isinstance(command, Use):
        args = "credits_used", -command.amount, command.reason, "", ""
    elif isinstance(command, Adjust):
        args = "credits_adjusted", command.delta, command.reason, "", ""
    else:
        raise ValidationError("kind", f"not a ledger command: {type(command).__name__}")
    if SEP in args[2] or SEP in args[3] or SEP in command.user_id:  # the command checked
        raise ValidationError("text", "must not contain control characters")  # them: again
    return args


def fingerprint(kind: str, user_id: str, amount: int, text: str, ref: str, extra: str = "") -> str:
    """What makes two appends the same request (compared on a repeated key)."""
    parts = (kind, user_id, str(amount), text, ref) + ((extra,) if extra else ())
    raw = "\x1f".join(parts).encode("utf-8")
    return hashlib.sha1(raw).hexdigest()


class Appender:
    """Appends ledger commands as events to the partition's priority stream."""

    def __init__(
        self, client: RedisClient, config: StreamsConfig, scripts: Scripts | None = None
    ) -> None:
        self._redis = client
        self._config = config
        self._scripts = scripts or load(client)
        self._prefixes: dict[int, tuple[str, str]] = {}
        """Per partition, what its account and transactions keys start with:
        ``keys.account(p, user) == keys.account(p, "") + user`` (the user id
        ends the key); a concatenation costs less than building the key."""

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
        limits = self._config.hold_limits
        max_holds = limits.max_open
        for command, _, idem in items:
            if idem is not None:
                check_idempotency_key(idem)
            if isinstance(command, Hold):
                limits.check_expiry(command.expires_in_s)
            args.append(_lua_args(command))
        if not items:
            return []
        batches: list[list[int]] = []
        results: list[Appended | LedgerError | None] = [None] * len(items)

        def settle(call: int, replies: list[list[bytes]]) -> None:
            for index, reply in zip(batches[call], replies, strict=True):
                command, _, idem = items[index]
                if reply[0] == b"ok" and len(reply) == 4:  # the usual reply, without _result
                    user, version = command.user_id, int(reply[1])
                    results[index] = _appended(
                        f"{user}:{version}", user, version, int(reply[2]), False, int(reply[3])
                    )
                else:
                    results[index] = _result(command, idem, reply, max_holds)

        with translate():
            run_many(self._redis, self._calls(items, args, batches), settle, wait=self._config.wait)
        return [r for r in results if r is not None]

    def _calls(
        self,
        items: Sequence[tuple[Command, Priority, str | None]],
        args: Sequence[LuaArgs],
        batches: list[list[int]],
    ) -> Iterator[Call]:
        """The script calls for ``items``, each yielded when full; ``batches``
        receives the item indexes of each call, in the order yielded.

        A call holds events of one partition and one priority; an event of
        another priority closes its partition's open call first, so the events
        of a partition run in the order given.
        """
        config, count, script = self._config, self._config.partitions, self._scripts.append
        prefixes = self._prefixes
        open_: dict[int, tuple[Priority, list[str], list[ScriptArg], list[int]]] = {}
        limit = min(CHUNK, 4)  # the first calls small, so Redis starts at once
        flag = ("0", "1")  # use_idem, by whether the event has an idempotency key

        def close(call: tuple[Priority, list[str], list[ScriptArg], list[int]]) -> Call:
            nonlocal limit
            batches.append(call[3])
            limit = min(CHUNK, 4 << len(batches))
            return script, call[1], call[2]

        for index, (command, priority, idem) in enumerate(items):
            kind, amount, text, ref, extra = args[index]
            user = command.user_id
            p = keys.partition_of(user, count)
            call = open_.get(p)
            if call is not None and call[0] != priority:
                del open_[p]
                yield close(call)
                call = None
            if call is None:
                call = open_[p] = (
                    priority,
                    [keys.stream(p, priority)],
                    [
                        config.idempotency_ttl_s,
                        MAX_CREDITS,
                        config.queue_for(priority),
                        config.hold_limits.max_open,
                    ],
                    [],
                )
            call_keys, indexes = call[1], call[3]
            prefix = prefixes.get(p)
            if prefix is None:
                prefix = prefixes[p] = (keys.account(p, ""), keys.transactions(p, ""))
            call_keys.append(prefix[0] + user)
            if idem:
                call_keys.append(keys.idempotency(p, user, idem))
            hold = kind in HOLD_KINDS
            if ref and not hold:
                call_keys.append(prefix[1] + user)
            if hold:
                call_keys.append(keys.holds(p, user))
                call_keys.append(keys.holds_due(p))
            fp = fingerprint(kind, user, amount, text, ref, extra) if idem or ref else ""
            arg = f"{kind}{SEP}{user}{SEP}{amount}{SEP}{text}{SEP}{ref}{SEP}{flag[bool(idem)]}{fp}"
            call[2].append(f"{arg}{SEP}{extra}" if extra else arg)
            indexes.append(index)
            if len(indexes) >= limit:
                del open_[p]
                yield close(call)
        for call in open_.values():
            yield close(call)


_new = object.__new__
_FIELDS = ("event_id", "user_id", "version", "balance", "duplicate", "held", "hold_id")
if tuple(f.name for f in fields(Appended)) != _FIELDS:  # pragma: no cover - a guard
    raise AssertionError("_appended must set every field of Appended, in order")
_SET = tuple(Appended.__dict__[name].__set__ for name in _FIELDS)


def _appended(
    event_id: str,
    user_id: str,
    version: int,
    balance: int,
    duplicate: bool,
    held: int = 0,
    hold_id: str = "",
) -> Appended:
    """``Appended(...)``, a third of the cost: a frozen dataclass's ``__init__``
    sets each field through ``object.__setattr__``; this sets the slots directly
    (one result per appended event: it shows in the batch's cost)."""
    appended: Appended = _new(Appended)
    set_event_id, set_user_id, set_version, set_balance, set_duplicate, set_held, set_hold = _SET
    set_event_id(appended, event_id)
    set_user_id(appended, user_id)
    set_version(appended, version)
    set_balance(appended, balance)
    set_duplicate(appended, duplicate)
    set_held(appended, held)
    set_hold(appended, hold_id)
    return appended


def _result(
    command: Command, idem: str | None, reply: list[bytes], max_holds: int = 0
) -> Appended | LedgerError:
    status = reply[0]
    user = command.user_id
    if status == b"ok":
        version = int(reply[1])
        held = int(reply[3]) if len(reply) > 3 else 0
        hold_id = reply[4].decode() if len(reply) > 4 else ""
        return _appended(f"{user}:{version}", user, version, int(reply[2]), False, held, hold_id)
    if status == b"dup":
        held = int(reply[4]) if len(reply) > 4 and reply[4] else 0
        hold_id = reply[5].decode() if len(reply) > 5 else ""
        return _appended(reply[1].decode(), user, int(reply[2]), int(reply[3]), True, held, hold_id)
    name = status.decode()
    if name == "insufficient":
        if isinstance(command, Use | Hold):
            requested = command.amount
        else:
            requested = -getattr(command, "delta", 0)
        available = int(reply[2]) if len(reply) > 2 else None
        return InsufficientCredits(user, int(reply[1]), requested, available)
    hold_id = getattr(command, "hold_id", "")
    if name == "too_many_holds":
        return TooManyHolds(user, max_holds)
    if name == "unknown_hold":
        return UnknownHold(user, hold_id)
    if name == "hold_not_open":
        return HoldNotOpen(user, hold_id)
    if name == "hold_not_due":
        return HoldNotDue(user, hold_id)
    if name == "over_capture":
        return ValidationError(
            "amount",
            f"amount {getattr(command, 'amount', 0)} is more than the {int(reply[1])} credits held",
        )
    if name == "unknown_account":
        return UnknownAccount(user)
    if name == "duplicate_user":
        return DuplicateUser(user)
    if name == "limit":
        return LimitExceeded(f"the totals of {user!r} would exceed {MAX_CREDITS} credits")
    if name == "reused":
        if reply[1] == b"transaction" and isinstance(command, Purchase):
            return TransactionReused(command.transaction_id)
        return IdempotencyKeyReused(idem or "")
    raise Unavailable(f"unexpected reply from append script: {name!r}")
