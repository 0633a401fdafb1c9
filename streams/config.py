"""Queue configuration and the engine's settings.

The original system's named queues map to priority levels; ``workers`` is how
many consumers a worker process runs for the queue by default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ledger.commands import (
    DEFAULT_MAX_HOLD_EXPIRY_S,
    DEFAULT_MAX_OPEN_HOLDS,
    MAX_HOLD_EXPIRY_S,
    MAX_OPEN_HOLDS,
    HoldLimits,
)
from ledger.tasks import Priority

from .errors import ConfigError


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSpec:
    name: str
    priority: Priority
    workers: int


DEFAULT_QUEUES: tuple[QueueSpec, ...] = (
    QueueSpec(name="default", priority=Priority.NORMAL, workers=2),
    QueueSpec(name="high_priority", priority=Priority.HIGH, workers=3),
    QueueSpec(name="low_priority", priority=Priority.LOW, workers=1),
)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
MAX_WAIT_REPLICAS = 100
"""Most replicas an append can wait for (``wait_replicas``)."""
MAX_WAIT_TIMEOUT_MS = 60_000
"""Longest ``WAIT`` (``wait_timeout_ms``): the caller's request stays open that long."""
DEFAULT_PARTITIONS = 16
"""Fixed for a deployment (``ledger:meta``). With 16, every master of a Redis Cluster
of up to 16 masters made the usual way holds partitions (``keys.hash_tag``); plan a
larger Cluster with more up front (64, 128): a Cluster grows by moving slots."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamsConfig:
    redis_url: str = DEFAULT_REDIS_URL
    partitions: int = DEFAULT_PARTITIONS
    queues: tuple[QueueSpec, ...] = DEFAULT_QUEUES
    idempotency_ttl_s: int = 7 * 24 * 3600
    wait_replicas: int = 0
    """Replicas that must confirm an append (``WAIT``) before it is answered; 0: none."""
    wait_timeout_ms: int = 1000
    """How long an append waits for them; then ``Unavailable`` (HTTP 503)."""
    extra_collections: tuple[str, ...] = field(default_factory=tuple)
    max_open_holds: int = DEFAULT_MAX_OPEN_HOLDS
    """Most open credit holds one account may have (``LEDGER_MAX_OPEN_HOLDS``, 1..10000,
    default 100); one more is refused with ``TooManyHolds`` (HTTP 409 too_many_holds)."""
    max_hold_expiry_s: int = DEFAULT_MAX_HOLD_EXPIRY_S
    """Longest ``expires_in_s`` of a hold (``LEDGER_MAX_HOLD_EXPIRY_S``, 1..31622400,
    default 604800 = 7 days); beyond it a hold is refused with 422 naming expires_in_s."""

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= 1024:
            raise ConfigError("partitions must be between 1 and 1024")
        names = [q.name for q in self.queues]
        if len(set(names)) != len(names):
            raise ConfigError("queue names must be unique")
        if not _whole(self.wait_replicas, 0, MAX_WAIT_REPLICAS):
            raise ConfigError(f"wait_replicas must be between 0 and {MAX_WAIT_REPLICAS}")
        if not _whole(self.wait_timeout_ms, 1, MAX_WAIT_TIMEOUT_MS):  # WAIT n 0: for ever
            raise ConfigError(f"wait_timeout_ms must be between 1 and {MAX_WAIT_TIMEOUT_MS}")
        if not _whole(self.max_open_holds, 1, MAX_OPEN_HOLDS):
            raise ConfigError(f"max_open_holds must be between 1 and {MAX_OPEN_HOLDS}")
        if not _whole(self.max_hold_expiry_s, 1, MAX_HOLD_EXPIRY_S):
            raise ConfigError(f"max_hold_expiry_s must be between 1 and {MAX_HOLD_EXPIRY_S}")

    @property
    def hold_limits(self) -> HoldLimits:
        """The hold limits ``ledger.commands.decide`` and append.lua enforce."""
        return HoldLimits(max_open=self.max_open_holds, max_expiry_s=self.max_hold_expiry_s)

    @property
    def wait(self) -> tuple[int, int] | None:
        """(replicas, timeout_ms) for ``scripts.run_many``'s ``wait``; None without WAIT."""
        return (self.wait_replicas, self.wait_timeout_ms) if self.wait_replicas else None

    def queue(self, name: str) -> QueueSpec | None:
        return next((q for q in self.queues if q.name == name), None)

    def queue_for(self, priority: Priority) -> str:
        """The queue name recorded on ledger events of this priority."""
        spec = next((q for q in self.queues if q.priority == priority), None)
        return spec.name if spec else priority.name.lower()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StreamsConfig:
        """Settings from REDIS_URL, LEDGER_PARTITIONS, LEDGER_COLLECTIONS (comma list),
        LEDGER_WAIT_REPLICAS, LEDGER_WAIT_TIMEOUT_MS, LEDGER_MAX_OPEN_HOLDS and
        LEDGER_MAX_HOLD_EXPIRY_S."""
        env = os.environ if environ is None else environ
        try:
            partitions = int(env.get("LEDGER_PARTITIONS", DEFAULT_PARTITIONS))
        except ValueError:
            raise ConfigError("LEDGER_PARTITIONS must be an integer") from None
        extra = tuple(c for c in env.get("LEDGER_COLLECTIONS", "").split(",") if c.strip())
        return cls(
            redis_url=env.get("REDIS_URL", DEFAULT_REDIS_URL),
            partitions=partitions,
            extra_collections=tuple(c.strip() for c in extra),
            wait_replicas=_env_int(env, "LEDGER_WAIT_REPLICAS", 0, 0, MAX_WAIT_REPLICAS),
            wait_timeout_ms=_env_int(env, "LEDGER_WAIT_TIMEOUT_MS", 1000, 1, MAX_WAIT_TIMEOUT_MS),
            max_open_holds=_env_int(
                env, "LEDGER_MAX_OPEN_HOLDS", DEFAULT_MAX_OPEN_HOLDS, 1, MAX_OPEN_HOLDS
            ),
            max_hold_expiry_s=_env_int(
                env, "LEDGER_MAX_HOLD_EXPIRY_S", DEFAULT_MAX_HOLD_EXPIRY_S, 1, MAX_HOLD_EXPIRY_S
            ),
        )


_INT_RE = re.compile(r"[+-]?[0-9]{1,18}")


def _whole(value: object, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _env_int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    """A whole number in ``lo..hi`` from ``name`` (unset or blank: ``default``)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not _INT_RE.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise ConfigError(f"{name} must be a whole number between {lo} and {hi}")
    return int(raw)
