"""What a consumer decides for each delivered entry, in types rather than codes.

``begin.lua`` answers an attempt number per entry, or a negative code for an
entry that must not run (``NotRun``). After the round each entry has an
``Outcome``: one small dataclass per case, each carrying only what its case
means (a latency, a delay, an attempt count), which ``settle.lua`` receives
as ``op, number, error`` (``settle_args``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class NotRun(Enum):
    """Why ``begin.lua`` counted no attempt for an entry (its negative answers)."""

    COMPLETED = -1
    """The task completed already (a redelivery): acknowledge it, do not run it."""
    TAKEN_OVER = -2
    """Another consumer holds the entry now: leave it, and its outcome, to that one."""


def begun(reply: int) -> int | NotRun:
    """One of ``begin.lua``'s answers: the attempt number, or why the entry won't run."""
    return NotRun(reply) if reply < 0 else reply


@dataclass(frozen=True, slots=True)
class Succeeded:
    """Handled: acknowledged and counted, with its latency from enqueue (or event) time."""

    latency_ms: int


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """Acknowledged with nothing recorded (a projector's entry; a task done already)."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """Left alone: another consumer holds the entry now."""


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Failed; delivered again after ``delay_ms``."""

    delay_ms: int
    error: str


@dataclass(frozen=True, slots=True)
class DeadLettered:
    """Failed for good (poison, or out of attempts): moved to the dead letters."""

    attempts: int
    error: str


Outcome = Succeeded | Acknowledged | Skipped | RetryLater | DeadLettered


def settle_args(outcome: Outcome) -> tuple[str, int, str]:
    """``settle.lua``'s ``op, number, error`` for ``outcome``."""
    match outcome:
        case Succeeded(latency_ms):
            return "ok", latency_ms, ""
        case Acknowledged():
            return "ack", 0, ""
        case Skipped():
            return "skip", 0, ""
        case RetryLater(delay_ms, error):
            return "retry", delay_ms, error
        case DeadLettered(attempts, error):
            return "dead", attempts, error


__all__ = [
    "Acknowledged",
    "DeadLettered",
    "NotRun",
    "Outcome",
    "RetryLater",
    "Skipped",
    "Succeeded",
    "begun",
    "settle_args",
]
