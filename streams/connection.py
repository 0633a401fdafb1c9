"""Connecting to Redis (single node or Cluster) and preparing its streams."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import redis
from redis.cluster import RedisCluster

from ledger.tasks import Priority

from . import keys
from .errors import ConfigError, Unavailable

CLUSTER_SCHEME = "redis+cluster://"

RedisClient = redis.Redis | RedisCluster
"""A single-node or Cluster client, bytes responses (``connect``); scripts run
through ``scripts.run_many``, replies are read through ``replies``."""


def connect(url: str, **kwargs: Any) -> RedisClient:
    """A client for ``redis://…`` / ``rediss://…`` or ``redis+cluster://host:port``."""
    opts: dict[str, Any] = {"socket_connect_timeout": 5, "health_check_interval": 30}
    opts.update(kwargs)
    if url.startswith(CLUSTER_SCHEME):
        return RedisCluster.from_url("redis://" + url[len(CLUSTER_SCHEME) :], **opts)
    return redis.Redis.from_url(url, **opts)


def is_cluster(client: RedisClient) -> bool:
    return isinstance(client, RedisCluster)


@contextmanager
def translate() -> Iterator[None]:
    """Turn driver errors into ``Unavailable`` (no driver internals leak out)."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise Unavailable(f"redis is unavailable: {exc}") from None
    except redis.ResponseError as exc:
        raise Unavailable(f"redis refused the command: {exc}") from None


def ensure_partitions(client: RedisClient, partitions: int) -> None:
    """Record the partition count on first use; refuse a different one later.

    Changing it would move accounts to other partitions and split their state.
    """
    with translate():
        client.hsetnx(keys.META, "partitions", partitions)
        stored = int(cast(bytes, client.hget(keys.META, "partitions")))  # set just above
    if stored != partitions:
        raise ConfigError(
            f"this Redis holds a ledger with {stored} partitions; configured {partitions}"
        )


def ensure_groups(
    client: RedisClient, partitions: int, group: str, levels: Iterable[Priority] = keys.LEVELS_DESC
) -> None:
    """Create ``group`` on every stream from its very first entry (idempotent)."""
    with translate():
        for p in range(partitions):
            for level in levels:
                try:
                    client.xgroup_create(keys.stream(p, level), group, id="0", mkstream=True)
                except redis.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
