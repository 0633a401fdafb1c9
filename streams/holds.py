"""Credit holds in Redis: listing an account's open holds, and expiring them.

The holds themselves are decided by ``lua/append.lua`` like every ledger event
(``Hold``, ``Capture``, ``Release``, ``Expire`` commands through the
``Appender``). Redis keeps, per account, the open holds in
``ledger:{T}:holds:<user_id>`` (hold id -> "credits|expires_at_ms|at_ms|reason")
and, per partition, every open hold by its expiry in ``ledger:{T}:holds-due``.

Expiry (``expire_due``, run by ``ledger scheduler``): each round reads the ids
of holds due by Redis's clock from every partition's ``holds-due`` (one
pipelined ``ZRANGEBYSCORE`` per partition) and appends an ``Expire`` for each,
batched through the append script. The script releases a hold only if it is
still open and due *at that moment*, in the same atomic step that removes it
from both keys, so however many schedulers run, and whatever capture or
release races it, each hold is closed exactly once: an expiry that lost the
race gets ``hold_not_open`` (a no-op here), and a capture that lost it gets
409 ``hold_not_open``. A scheduler killed mid-round leaves nothing half done:
the next round finds the holds still due.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ledger.commands import Expire
from ledger.errors import HoldNotDue, HoldNotOpen, LedgerError, UnknownHold
from ledger.tasks import Priority

from . import keys
from .appender import Appended, Appender
from .connection import RedisClient, translate
from .replies import text
from .times import iso_utc

EXPIRY_PRIORITY = Priority.HIGH
"""Expiries are appended to the HIGH stream: they free credits a client waits for."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenHoldView:
    hold_id: str
    amount: int
    expires_at_ms: int
    created_at_ms: int
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {
            "hold_id": self.hold_id,
            "amount": self.amount,
            "reason": self.reason,
            "created_at": iso_utc(self.created_at_ms),
            "expires_at": iso_utc(self.expires_at_ms),
            "expires_at_ms": self.expires_at_ms,
        }


def parse_entry(hold_id: str, raw: str) -> OpenHoldView:
    credits, expires, at, reason = raw.split("|", 3)
    return OpenHoldView(
        hold_id=hold_id,
        amount=int(credits),
        expires_at_ms=int(expires),
        created_at_ms=int(at),
        reason=reason,
    )


def hold_number(hold_id: str) -> int:
    """The n of "<user>:h<n>" (to sort holds in the order they were made)."""
    return int(hold_id.rsplit(":h", 1)[1])


def open_holds(client: RedisClient, partitions: int, user_id: str) -> list[OpenHoldView]:
    """The account's open holds, oldest first (the authoritative state, not a read model).

    A hold past its expiry that the scheduler has not released yet is still
    listed: it still counts in ``held`` until its ``hold_expired`` event."""
    p = keys.partition_of(user_id, partitions)
    with translate():
        raw = client.hgetall(keys.holds(p, user_id))
    views = [parse_entry(text(k), text(v)) for k, v in raw.items()]
    return sorted(views, key=lambda h: hold_number(h.hold_id))


def read_together(
    client: RedisClient, partitions: int, user_id: str
) -> tuple[dict[str, str], dict[str, str]]:
    """The account's state hash and its holds hash (hold id -> entry), read together
    (one MULTI, one slot): ``held`` is then exactly the sum of the holds read. Also what
    ``ledger audit`` compares with the fold."""
    p = keys.partition_of(user_id, partitions)
    with translate():
        pipe = client.pipeline(transaction=True)
        pipe.hgetall(keys.account(p, user_id))
        pipe.hgetall(keys.holds(p, user_id))
        state_raw, holds_raw = pipe.execute()
    return _decoded(state_raw), _decoded(holds_raw)


def _decoded(raw: Mapping[Any, Any]) -> dict[str, str]:
    """Text of a hash (undecodable bytes replaced: ``ledger audit`` reads what may be
    damaged, and names what it finds rather than failing)."""
    return {
        (k.decode(errors="replace") if isinstance(k, bytes) else str(k)): (
            v.decode(errors="replace") if isinstance(v, bytes) else str(v)
        )
        for k, v in raw.items()
    }


def account_holds(
    client: RedisClient, partitions: int, user_id: str
) -> tuple[dict[str, str], list[OpenHoldView]]:
    """The account's state hash and its open holds (``read_together``), oldest first;
    ({}, []) for no account."""
    state, raw = read_together(client, partitions, user_id)
    views = [parse_entry(k, v) for k, v in raw.items()]
    return state, sorted(views, key=lambda h: hold_number(h.hold_id))


def user_of(hold_id: str) -> str:
    """The account of a hold id ("<user_id>:h<n>")."""
    return hold_id.rsplit(":h", 1)[0]


def due_holds(
    client: RedisClient, partitions: int, now_ms: int, limit: int
) -> list[tuple[keys.Partition, list[str]]]:
    """Per partition, up to ``limit`` ids of holds whose expiry is at or before ``now_ms``."""
    parts = keys.partitions(partitions)
    with translate():
        pipe = client.pipeline(transaction=False)
        for p in parts:
            pipe.zrangebyscore(keys.holds_due(p), "-inf", now_ms, start=0, num=limit)
        found = pipe.execute()
    return [(p, [text(i) for i in ids]) for p, ids in zip(parts, found, strict=True) if ids]


def redis_now_ms(client: RedisClient) -> int:
    with translate():
        seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


@dataclass
class ExpiryStats:
    expired: int = 0
    """Holds this sweeper released."""
    lost: int = 0
    """Holds due that another process closed first (captured, released, expired)."""


def expire_due(
    client: RedisClient,
    appender: Appender,
    partitions: int,
    *,
    batch: int = 1000,
    stats: ExpiryStats | None = None,
) -> int:
    """Release every hold due now; returns how many this call released.

    Rounds of up to ``batch`` holds per partition, until a round finds fewer.
    The time is Redis's (``TIME``), as the script's is, so nothing is tried early
    but by the scheduler's clock; a hold the script finds not yet due is left
    for the next sweep."""
    stats = stats if stats is not None else ExpiryStats()
    released = 0
    while True:
        now = redis_now_ms(client)
        due = due_holds(client, partitions, now, batch)
        if not due:
            return released
        ids = [hold_id for _, chunk in due for hold_id in chunk]
        outcomes = appender.append_many(
            [(Expire(user_id=user_of(h), hold_id=h), EXPIRY_PRIORITY, None) for h in ids]
        )
        stale: list[str] = []
        progress = released
        for hold_id, outcome in zip(ids, outcomes, strict=True):
            if isinstance(outcome, Appended):
                released += 1
                stats.expired += 1
            elif isinstance(outcome, HoldNotOpen | UnknownHold):
                stats.lost += 1
                stale.append(hold_id)
            elif isinstance(outcome, HoldNotDue):
                pass
            elif isinstance(outcome, LedgerError):  # pragma: no cover - a bug if it happens
                raise outcome
        if stale:
            _forget(client, partitions, stale)
        if max(len(chunk) for _, chunk in due) < batch or (released == progress and not stale):
            return released  # all done, or only holds not yet due by the script's clock


def _forget(client: RedisClient, partitions: int, hold_ids: Iterable[str]) -> None:
    """Drop due entries of holds that are no longer open (the script already does
    when it closes them; this only cleans up after a hand-edited key)."""
    with translate():
        pipe = client.pipeline(transaction=False)
        for hold_id in hold_ids:
            p = keys.partition_of(user_of(hold_id), partitions)
            pipe.zrem(keys.holds_due(p), hold_id)
        pipe.execute()


def pending_holds(client: RedisClient, partitions: int) -> int:
    """Open holds in every partition (due or not)."""
    with translate():
        pipe = client.pipeline(transaction=False)
        for p in keys.partitions(partitions):
            pipe.zcard(keys.holds_due(p))
        return int(sum(pipe.execute()))
