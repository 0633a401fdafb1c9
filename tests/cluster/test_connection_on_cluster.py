"""``streams.connection`` on a real 3-master cluster: several seeds, closing a
client (or the ``QueueManager`` holding it) closes its connections on every
node, and ``ping`` asks every master."""

from __future__ import annotations

import os
import signal

import pytest
import redis as redis_py

from api.dev.cluster import RedisClusterNodes
from api.dev.embedded import LOOPBACK, free_port
from streams import HandlerRegistry, QueueManager, StreamsConfig, Unavailable
from streams.connection import CLUSTER_SCHEME, connect, ping

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


def test_any_answering_seed_of_several_finds_the_cluster(
    redis_cluster: str, redis_cluster_nodes: RedisClusterNodes
) -> None:
    dead = free_port()  # nothing listens there: a seed node that is down
    live = redis_cluster_nodes.masters_now()[-1]
    client = connect(f"{CLUSTER_SCHEME}{LOOPBACK}:{dead},{LOOPBACK}:{live}")
    try:
        assert client.set("ledger:test:seed", "1")
        ping(client)  # every master answers
        known = {node.port for node in client.get_primaries()}  # type: ignore[union-attr]
        assert known == set(redis_cluster_nodes.masters_now())
    finally:
        client.delete("ledger:test:seed")
        client.close()


def test_no_answering_seed_is_unavailable_not_a_driver_error() -> None:
    with pytest.raises(Unavailable, match="redis cluster is unavailable"):
        connect(f"{CLUSTER_SCHEME}{LOOPBACK}:{free_port()},{LOOPBACK}:{free_port()}")


def test_ready_checks_every_master(
    redis_cluster: str, redis_cluster_nodes: RedisClusterNodes
) -> None:
    """``ping`` (what ``/ready`` runs) asks each master: one that does not answer
    fails it, though the seed and the other masters answer."""
    client = connect(redis_cluster, socket_timeout=0.3)
    victim = redis_cluster_nodes.running()[-1]  # a master (no replicas here), not the seed
    try:
        ping(client)
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGSTOP)  # a master that hangs
        try:
            with pytest.raises((redis_py.TimeoutError, redis_py.ConnectionError)):
                ping(client)
        finally:
            os.kill(victim.pid, signal.SIGCONT)
    finally:
        client.close()
