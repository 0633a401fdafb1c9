"""Connecting to Redis (single node or Cluster) and preparing its streams."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException

from ledger.tasks import Priority

from . import keys
from .errors import ConfigError, Unavailable

CLUSTER_SCHEME = "redis+cluster://"

RedisClient = redis.Redis | RedisCluster
"""A single-node or Cluster client, bytes responses (``connect``); scripts run
through ``scripts.run_many``, replies are read through ``replies``."""


class _ClusterClient(RedisCluster):
    """A ``RedisCluster`` whose ``close`` closes its nodes' connections too.

    Made from a URL, redis-py gives each node's client a pool that client does not
    own, so ``RedisCluster.close`` leaves every socket open until the garbage
    collector finds the client (a closed ``QueueManager`` kept its connections)."""

    def close(self) -> None:
        manager = getattr(self, "nodes_manager", None)
        nodes = list(manager.nodes_cache.values()) if manager is not None else []
        super().close()
        for node in nodes:
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()


def connect(url: str, **kwargs: Any) -> RedisClient:
    """A client for ``redis://…`` / ``rediss://…`` / ``unix://…``, or for a Cluster:
    ``redis+cluster://host:port[,host:port…]``.

    A Cluster client finds every node from any seed that answers, so name more
    than one: with a single seed, a process started while that node is down
    cannot join even though the cluster has failed over. Raises ``Unavailable``
    when no seed answers (a Cluster client asks for the slot table at once)."""
    opts: dict[str, Any] = {"socket_connect_timeout": 5, "health_check_interval": 30}
    opts.update(kwargs)
    if not url.startswith(CLUSTER_SCHEME):
        return redis.Redis.from_url(url, **opts)
    first, others = cluster_seeds(url)
    try:
        return _ClusterClient.from_url(
            first,
            startup_nodes=[ClusterNode(host, port) for host, port in others],  # type: ignore[no-untyped-call]
            **opts,
        )
    except RedisClusterException as exc:
        raise Unavailable(f"redis cluster is unavailable: {exc}") from None


def cluster_seeds(url: str) -> tuple[str, list[tuple[str, int]]]:
    """(a ``redis://`` URL of the first seed, (host, port) of the others) of a
    ``redis+cluster://[user:password@]host:port,host:port…[/0][?options]`` URL."""
    parts = urlsplit("redis://" + url[len(CLUSTER_SCHEME) :])
    auth, _, hosts = parts.netloc.rpartition("@")
    seeds = hosts.split(",")
    others = []
    for seed in seeds[1:]:
        host, sep, port = seed.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"redis cluster seed {seed!r} is not host:port")
        others.append((host.strip("[]"), int(port)))
    netloc = f"{auth}@{seeds[0]}" if auth else seeds[0]
    return urlunsplit(parts._replace(netloc=netloc)), others


def ping(client: RedisClient) -> None:
    """Raise unless Redis answers: on a Cluster, every master."""
    if isinstance(client, RedisCluster):
        client.ping(target_nodes=RedisCluster.PRIMARIES)
    else:
        client.ping()


def is_cluster(client: RedisClient) -> bool:
    return isinstance(client, RedisCluster)


@contextmanager
def translate() -> Iterator[None]:
    """Turn driver errors into ``Unavailable`` (no driver internals leak out)."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, RedisClusterException) as exc:
        raise Unavailable(f"redis is unavailable: {exc}") from None
    except redis.ResponseError as exc:
        raise Unavailable(f"redis refused the command: {exc}") from None


_RECORD_META = """
if redis.call('HSETNX', KEYS[1], 'partitions', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'layout', ARGV[2])
end
return redis.call('HMGET', KEYS[1], 'partitions', 'layout')
"""
"""Both fields in one step: a process starting alongside never sees a count
without its layout (which is how a ledger of layout "1" looks)."""


def ensure_partitions(client: RedisClient, partitions: int) -> None:
    """Record the partition count and key layout on first use; refuse others later.

    Changing the count would move accounts to other partitions and split their
    state; a ledger of another key layout (``keys.LAYOUT``) has its keys where
    this code does not look.
    """
    with translate():
        stored = client.eval(_RECORD_META, 1, keys.META, partitions, keys.LAYOUT)
    _refuse_other(cast(list[bytes | None], stored), partitions)


def check_partitions(client: RedisClient, partitions: int) -> None:
    """``ensure_partitions`` for read-only tools: refuses the same, records nothing
    (a Redis that holds no ledger passes)."""
    with translate():
        stored = cast(list[bytes | None], client.hmget(keys.META, ["partitions", "layout"]))
    if stored[0] is not None:
        _refuse_other(stored, partitions)


def _refuse_other(stored: Sequence[bytes | None], partitions: int) -> None:
    """ConfigError unless ``stored`` (partitions, layout of ledger:meta) is this ledger's."""
    count, layout = int(cast(bytes, stored[0])), stored[1]
    if layout != keys.LAYOUT.encode():
        found = (
            "layout 1 (hash tags {p<N>}; ledger:meta records no layout)"
            if layout is None
            else f"layout {layout.decode(errors='replace')!r}"
        )
        raise ConfigError(
            f"this Redis holds a ledger whose keys have {found}, and this version reads "
            f"and writes layout {keys.LAYOUT} (a slot-spread hash tag per partition): its "
            "keys are not where this version looks. Migrate the event log first (every "
            "key of a partition moves to that partition's new tag), or run the version "
            "that wrote it; a Redis that holds no ledger data only needs DEL ledger:meta"
        )
    if count != partitions:
        raise ConfigError(
            f"this Redis holds a ledger with {count} partitions; configured {partitions}"
        )


def ensure_groups(
    client: RedisClient, partitions: int, group: str, levels: Iterable[Priority] = keys.LEVELS_DESC
) -> None:
    """Create ``group`` on every stream from its very first entry (idempotent)."""
    with translate():
        for p in keys.partitions(partitions):
            for level in levels:
                try:
                    client.xgroup_create(keys.stream(p, level), group, id="0", mkstream=True)
                except redis.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
