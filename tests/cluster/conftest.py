"""A real 3-master Redis Cluster for the tests in this directory (started once)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from api.dev.cluster import RedisClusterNodes


@pytest.fixture(scope="session")
def redis_cluster_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    cluster = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster(redis_cluster_nodes: RedisClusterNodes) -> str:
    """The ``redis+cluster://`` URL of the session's cluster, flushed before the test."""
    redis_cluster_nodes.flushall()
    return redis_cluster_nodes.url
