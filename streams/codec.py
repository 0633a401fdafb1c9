"""Stream entries <-> domain values: the only module that imports msgpack.

A ledger event is stored as flat fields written by ``append.lua`` (so the
script can build it without a serialiser); a task stores its data as msgpack.

    event fields  k u v t a b p x tx r ph h q [hd ha he] [rq]

``hd ha he`` (held after, the hold's credits, its expiry) are there when one
of them is non-zero: on hold events and on any event of an account holding
credits; absent, they read as 0.
    task fields   k=task id q ty d t [rq]

``rq`` marks a requeued copy of a dead letter (its original "<stream>/<id>").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from ledger.events import (
    EVENT_TYPES,
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
)
from ledger.tasks import MAX_TASK_BYTES

from .errors import DecodeError

MAX_ENTRY_BYTES = MAX_TASK_BYTES + 4096
"""Largest entry a consumer accepts: a task's data bound plus its other fields."""

TASK_KIND = "task"


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskMessage:
    task_id: str
    queue_name: str
    task_type: str
    data: Mapping[str, Any]
    enqueued_at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EventMessage:
    event: Event
    queue_name: str


Message = TaskMessage | EventMessage


def pack(data: Mapping[str, Any]) -> bytes:
    return msgpack.packb(data, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False, strict_map_key=True)


def event_id(user_id: str, version: int) -> str:
    """A ledger event's id: unique (stream ids are unique only within a stream)."""
    return f"{user_id}:{version}"


def message_id(message: Message) -> str:
    """What a handler keys its side effects on: the event id or the task id."""
    if isinstance(message, TaskMessage):
        return message.task_id
    return event_id(message.event.user_id, message.event.version)


def decode(fields: Mapping[bytes, bytes]) -> Message:
    """The message in a stream entry; DecodeError for anything else (oversized too)."""
    size = sum(len(k) + len(v) for k, v in fields.items())
    if size > MAX_ENTRY_BYTES:
        raise DecodeError(f"entry of {size} bytes is over the {MAX_ENTRY_BYTES}-byte bound", fields)
    try:
        kind = fields[b"k"].decode()
        if kind == TASK_KIND:
            data = unpack(fields[b"d"])
            if not isinstance(data, dict):
                raise ValueError("task data is not a map")
            return TaskMessage(
                task_id=fields[b"id"].decode(),
                queue_name=fields[b"q"].decode(),
                task_type=fields[b"ty"].decode(),
                data=data,
                enqueued_at_ms=int(fields[b"t"]),
            )
        return EventMessage(event=decode_event(fields), queue_name=fields[b"q"].decode())
    except DecodeError:
        raise
    except (
        KeyError,
        ValueError,
        TypeError,
        UnicodeDecodeError,
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
    ) as exc:
        raise DecodeError(f"undecodable entry: {exc!r}", fields) from None


def decode_event(fields: Mapping[bytes, bytes]) -> Event:
    """A ledger event from the fields append.lua wrote."""

    def s(name: bytes) -> str:
        return fields[name].decode()

    def n(name: bytes) -> int:
        return int(fields[name])

    def n0(name: bytes) -> int:
        raw = fields.get(name)
        return int(raw) if raw else 0

    kind = s(b"k")
    if kind not in EVENT_TYPES:
        raise DecodeError(f"unknown event kind {kind!r}", fields)
    common: dict[str, Any] = dict(
        user_id=s(b"u"),
        version=n(b"v"),
        at_ms=n(b"t"),
        prev_hash=s(b"ph"),
        hash=s(b"h"),
        after=Totals(balance=n(b"b"), purchased=n(b"p"), used=n(b"x"), held=n0(b"hd")),
    )
    amount, text = n(b"a"), s(b"tx")
    if kind == CreditsHeld.kind:
        return CreditsHeld(
            hold_id=s(b"r"), credits=n0(b"ha"), reason=text, expires_at_ms=n0(b"he"), **common
        )
    if kind == HoldCaptured.kind:
        return HoldCaptured(hold_id=s(b"r"), credits=-amount, hold_credits=n0(b"ha"), **common)
    if kind == HoldReleased.kind:
        return HoldReleased(hold_id=s(b"r"), hold_credits=n0(b"ha"), **common)
    if kind == HoldExpired.kind:
        return HoldExpired(hold_id=s(b"r"), hold_credits=n0(b"ha"), **common)
    if kind == UserRegistered.kind:
        return UserRegistered(email=text, **common)
    if kind == CreditsPurchased.kind:
        return CreditsPurchased(credits=amount, currency=text, transaction_id=s(b"r"), **common)
    if kind == CreditsUsed.kind:
        return CreditsUsed(credits=-amount, reason=text, **common)
    return CreditsAdjusted(delta=amount, reason=text, **common)


def event_fields(event: Event, queue_name: str) -> dict[str, str]:
    """The stream fields of an event, exactly as append.lua writes them."""
    a = event.after
    fields = {
        "k": event.kind,
        "u": event.user_id,
        "v": str(event.version),
        "t": str(event.at_ms),
        "a": str(event.amount),
        "b": str(a.balance),
        "p": str(a.purchased),
        "x": str(a.used),
        "tx": event.text,
        "r": event.ref,
        "ph": event.prev_hash,
        "h": event.hash,
        "q": queue_name,
    }
    if a.held or event.hold_amount or event.hold_expiry_ms:
        fields.update(hd=str(a.held), ha=str(event.hold_amount), he=str(event.hold_expiry_ms))
    return fields


def event_data(event: Event) -> dict[str, Any]:
    """The ``data`` a task handler receives for a ledger event (the original field names)."""
    a = event.after
    data: dict[str, Any] = {
        "event_id": event_id(event.user_id, event.version),
        "kind": event.kind,
        "user_id": event.user_id,
        "version": event.version,
        "at_ms": event.at_ms,
    }
    if isinstance(event, UserRegistered):
        data["email"] = event.email
    elif isinstance(event, CreditsPurchased):
        data.update(
            amount=event.credits, currency=event.currency, transaction_id=event.transaction_id
        )
    elif isinstance(event, CreditsUsed):
        data.update(amount=event.credits, reason=event.reason)
    elif isinstance(event, CreditsAdjusted):
        data.update(delta=event.delta, reason=event.reason)
    elif isinstance(event, CreditsHeld):
        data.update(
            hold_id=event.hold_id,
            amount=event.credits,
            reason=event.reason,
            expires_at_ms=event.expires_at_ms,
        )
    elif isinstance(event, HoldCaptured):
        data.update(
            hold_id=event.hold_id,
            amount=event.credits,
            released=event.released,
            hold_amount=event.hold_credits,
        )
    elif isinstance(event, HoldReleased | HoldExpired):
        data.update(hold_id=event.hold_id, released=event.hold_credits)
    data.update(
        balance_after=a.balance, purchased_total=a.purchased, used_total=a.used, hash=event.hash
    )
    if a.held:
        data.update(held_total=a.held, available_after=a.available)
    return data
