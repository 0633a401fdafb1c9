"""Settings, read once from the environment (or CLI flags) at the edge."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from streams.config import DEFAULT_PARTITIONS, StreamsConfig
from streams.errors import ConfigError


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    redis_url: str | None = None
    """None: ``ledger demo`` starts an embedded redis-server."""
    mongo_url: str | None = None
    """None: ``ledger demo`` starts an embedded Mongo-wire server."""
    mongo_db: str = "ledger"
    partitions: int = DEFAULT_PARTITIONS
    extra_collections: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        try:
            partitions = int(env.get("LEDGER_PARTITIONS", DEFAULT_PARTITIONS))
        except ValueError:
            raise ConfigError("LEDGER_PARTITIONS must be an integer") from None
        extra = tuple(c.strip() for c in env.get("LEDGER_COLLECTIONS", "").split(",")
                      if c.strip())
        return cls(redis_url=env.get("REDIS_URL") or None, mongo_url=env.get("MONGO_URL") or None,
                   mongo_db=env.get("MONGO_DB") or "ledger", partitions=partitions,
                   extra_collections=extra)

    def streams(self) -> StreamsConfig:
        if self.redis_url is None:
            raise ConfigError("REDIS_URL is not set (only `ledger demo` starts its own Redis)")
        return StreamsConfig(redis_url=self.redis_url, partitions=self.partitions,
                             extra_collections=self.extra_collections)
