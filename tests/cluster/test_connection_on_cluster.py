"""``streams.connection.connect`` on a real 3-master cluster: closing a client
(or the ``QueueManager`` holding it) closes its connections on every node."""

from __future__ import annotations

import pytest

from api.dev.cluster import RedisClusterNodes
from streams import HandlerRegistry, QueueManager, StreamsConfig

from .conftest import PARTITIONS

pytestmark = pytest.mark.cluster


def connections(cluster: RedisClusterNodes) -> set[tuple[int, str]]:
    """(node port, client id) of every connection on every master (but the asking one)."""
    found = set()
    for port in cluster.masters_now():
        with cluster.client(port) as c:
            me = c.client_id()
            found |= {(port, str(x["id"])) for x in c.client_list() if int(x["id"]) != me}
    return found


def test_closing_a_queue_manager_closes_its_connections_on_every_node(
    redis_cluster: str, redis_cluster_nodes: RedisClusterNodes
) -> None:
    before = connections(redis_cluster_nodes)
    qm = QueueManager(
        config=StreamsConfig(redis_url=redis_cluster, partitions=PARTITIONS),
        registry=HandlerRegistry(),
    )
    users = [f"conn-{i}" for i in range(12)]
    qm.enqueue_many("default", "noop", [{"user_id": u} for u in users])  # scripts, every node
    for user in users:
        qm.register_user(user, f"{user}@example.com")
        assert qm.balance(user) is not None  # plain commands too
    opened = connections(redis_cluster_nodes) - before
    assert len({port for port, _ in opened}) == len(redis_cluster_nodes.masters_now())
    qm.close()
    assert connections(redis_cluster_nodes) & opened == set()
