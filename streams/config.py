"""Queue configuration and the engine's settings.

The original system's named queues map to priority levels; ``workers`` is how
many consumers a worker process runs for the queue by default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

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
DEFAULT_PARTITIONS = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamsConfig:
    redis_url: str = DEFAULT_REDIS_URL
    partitions: int = DEFAULT_PARTITIONS
    queues: tuple[QueueSpec, ...] = DEFAULT_QUEUES
    idempotency_ttl_s: int = 7 * 24 * 3600
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000
    extra_collections: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= 1024:
            raise ConfigError("partitions must be between 1 and 1024")
        names = [q.name for q in self.queues]
        if len(set(names)) != len(names):
            raise ConfigError("queue names must be unique")

    def queue(self, name: str) -> QueueSpec | None:
        return next((q for q in self.queues if q.name == name), None)

    def queue_for(self, priority: Priority) -> str:
        """The queue name recorded on ledger events of this priority."""
        spec = next((q for q in self.queues if q.priority == priority), None)
        return spec.name if spec else priority.name.lower()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StreamsConfig:
        """Settings from REDIS_URL, LEDGER_PARTITIONS, LEDGER_COLLECTIONS (comma list)."""
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
        )
