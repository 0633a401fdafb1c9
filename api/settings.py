"""Settings, read once from the environment (or CLI flags) at the edge."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from streams.config import DEFAULT_PARTITIONS, StreamsConfig
from streams.errors import ConfigError

ROLES = ("reader", "producer", "admin")


def parse_api_keys(text: str) -> dict[str, str]:
    """``key:role,key:role`` -> {key: role}; refuses unknown roles and short keys."""
    keys: dict[str, str] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        key, sep, role = item.rpartition(":")
        if not sep or role not in ROLES:
            raise ConfigError(f"LEDGER_API_KEYS: {item!r} is not key:role with role in {ROLES}")
        if len(key) < 16:
            raise ConfigError("LEDGER_API_KEYS: keys must be at least 16 characters")
        keys[key] = role
    return keys


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    redis_url: str | None = None
    """None: ``ledger demo`` starts an embedded redis-server."""
    mongo_url: str | None = None
    """None: ``ledger demo`` starts an embedded Mongo-wire server."""
    mongo_db: str = "ledger"
    partitions: int = DEFAULT_PARTITIONS
    extra_collections: tuple[str, ...] = ()
    api_keys: Mapping[str, str] = field(default_factory=dict)
    """bearer key -> role (producer | reader | admin); empty: no auth (loopback only)."""
    rate_per_s: float = 200.0
    """Per-key token bucket: sustained requests per second …"""
    rate_burst: int = 400
    """… and the burst it allows."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        shared = StreamsConfig.from_env(env)  # partitions and collections, parsed once
        return cls(redis_url=env.get("REDIS_URL") or None, mongo_url=env.get("MONGO_URL") or None,
                   mongo_db=env.get("MONGO_DB") or "ledger", partitions=shared.partitions,
                   extra_collections=shared.extra_collections,
                   api_keys=parse_api_keys(env.get("LEDGER_API_KEYS", "")))

    def streams(self) -> StreamsConfig:
        if self.redis_url is None:
            raise ConfigError("REDIS_URL is not set (only `ledger demo` starts its own Redis)")
        return StreamsConfig(redis_url=self.redis_url, partitions=self.partitions,
                             extra_collections=self.extra_collections)
