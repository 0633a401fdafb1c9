"""``scripts.run_many`` and the QueueManager on a real 3-master Redis Cluster."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from pymongo.database import Database
from redis.crc import key_slot

from api.dev.cluster import RedisClusterNodes
from api.dev.embedded import LOOPBACK
from ledger.commands import Purchase, RegisterUser, Use
from ledger.errors import InsufficientCredits
from ledger.tasks import DEFAULT_COLLECTIONS, Priority
from projections.store import MongoDBManager
from streams import HandlerRegistry, QueueManager, StreamsConfig, Unavailable, keys
from streams.appender import Appended
from streams.handlers import DBManager
from tests.streams.test_lost_reply import ReplyDropper

pytestmark = pytest.mark.cluster

PARTITIONS = 8


def slot_of(p: keys.Partition) -> int:
    return key_slot(keys.tag(p).encode())


@pytest.fixture
def qm(
    redis_cluster: str, mongo_db: Database[Any], redis_cluster_nodes: RedisClusterNodes
) -> Iterator[QueueManager]:
    manager = QueueManager(
        config=StreamsConfig(redis_url=redis_cluster, partitions=PARTITIONS),
        db=MongoDBManager(mongo_db, DEFAULT_COLLECTIONS),
        registry=HandlerRegistry(),
    )
    try:
        yield manager
    finally:
        manager.close()


def state(qm: QueueManager, user: str) -> dict[str, Any]:
    found = qm.balance(user)
    assert found is not None
    return found


def owners(nodes: RedisClusterNodes) -> dict[keys.Partition, int]:
    """{partition: port of the master that owns its slot}"""
    return {p: nodes.owner(slot_of(p)) for p in keys.partitions(PARTITIONS)}


def users_on(nodes: RedisClusterNodes, count: int) -> list[str]:
    """``count`` user ids whose partitions cover every master."""
    by_port: dict[int, list[str]] = {}
    found: list[str] = []
    where = owners(nodes)
    i = 0
    while len(found) < count or len(by_port) < len(nodes.nodes):
        user = f"user-{i}"
        port = where[keys.partition_of(user, PARTITIONS)]
        if port not in by_port or len(found) < count:
            by_port.setdefault(port, []).append(user)
            found.append(user)
        i += 1
    return found


def test_partitions_span_several_masters(redis_cluster_nodes: RedisClusterNodes) -> None:
    assert len(set(owners(redis_cluster_nodes).values())) >= 2


def test_queue_manager_appends_on_cluster(
    qm: QueueManager, redis_cluster_nodes: RedisClusterNodes
) -> None:
    assert qm.register_user("alice", "alice@example.com").version == 1
    assert qm.purchase("alice", 500, transaction_id="pay-1").balance == 500
    first = qm.use("alice", 120, reason="report", idempotency_key="req-9")
    assert (first.version, first.balance, first.duplicate) == (3, 380, False)
    again = qm.use("alice", 120, reason="report", idempotency_key="req-9")
    assert (again.event_id, again.balance, again.duplicate) == (first.event_id, 380, True)
    with pytest.raises(InsufficientCredits):
        qm.use("alice", 1000, reason="too much")
    assert state(qm, "alice")["balance"] == 380

    users = users_on(redis_cluster_nodes, 12)
    where = owners(redis_cluster_nodes)
    ports = {where[keys.partition_of(u, PARTITIONS)] for u in users}
    assert len(ports) == len(redis_cluster_nodes.nodes)  # every master takes part
    results = qm.append_batch(
        [(RegisterUser(user_id=u, email=f"{u}@example.com"), Priority.NORMAL, None) for u in users]
        + [
            (Purchase(user_id=u, amount=10 + i, transaction_id=f"t-{u}"), Priority.HIGH, f"k-{u}")
            for i, u in enumerate(users)
        ]
        + [(Use(user_id=users[0], amount=10_000), Priority.HIGH, None)]
    )
    assert [r.version for r in results[: len(users)] if isinstance(r, Appended)] == [1] * len(users)
    assert [r.balance for r in results[len(users) : -1] if isinstance(r, Appended)] == [
        10 + i for i in range(len(users))
    ]
    assert isinstance(results[-1], InsufficientCredits)
    repeat = qm.append_batch(
        [
            (Purchase(user_id=u, amount=10 + i, transaction_id=f"t-{u}"), Priority.HIGH, f"k-{u}")
            for i, u in enumerate(users)
        ]
    )
    assert all(isinstance(r, Appended) and r.duplicate for r in repeat)
    assert [state(qm, u)["balance"] for u in users] == [10 + i for i in range(len(users))]

    ids = qm.enqueue_many("default", "credit_calculation", [{"user_id": u} for u in users])
    assert len(set(ids)) == len(users)
    assert all(qm.get_task_status(t)["status"] == "queued" for t in ids)  # type: ignore[index]


def test_worker_processes_tasks_and_events_on_cluster(
    qm: QueueManager, redis_cluster_nodes: RedisClusterNodes, mongo_db: Database[Any]
) -> None:
    seen: list[str] = []

    def credit_calculation(data: Mapping[str, Any], db_manager: DBManager) -> bool:
        seen.append(data["user_id"])
        return True

    qm.register_handler("credit_calculation", credit_calculation)
    users = users_on(redis_cluster_nodes, 6)
    for u in users:
        qm.register_user(u, f"{u}@example.com")
    ids = qm.enqueue_many("default", "credit_calculation", [{"user_id": u} for u in users])
    worker = qm.worker(block_ms=50, reclaim_every_ms=10)
    assert worker.run_until_idle(timeout=20) == 2 * len(users)
    assert sorted(seen) == sorted(users)
    assert all(qm.get_task_status(t)["status"] == "completed" for t in ids)  # type: ignore[index]
    assert {d["_id"] for d in mongo_db.users.find()} == {f"{u}:1" for u in users}


def test_calls_are_grouped_per_node(
    qm: QueueManager, redis_cluster_nodes: RedisClusterNodes
) -> None:
    users = users_on(redis_cluster_nodes, 30)
    tasks = [{"user_id": u} for u in users]
    for nodes in redis_cluster_nodes.nodes:  # scripts unknown everywhere: NOSCRIPT, load, rerun
        with redis_cluster_nodes.client(nodes.port) as c:
            c.script_flush()
    qm.enqueue_many("default", "credit_calculation", tasks)
    redis_cluster_nodes.reset_stats()
    ids = qm.enqueue_many("default", "credit_calculation", tasks)
    where = owners(redis_cluster_nodes)
    expected = Counter(where[keys.partition_of(t, PARTITIONS)] for t in ids)
    calls = redis_cluster_nodes.evalsha_calls()
    assert calls == {port: expected.get(port, 0) for port in calls}
    assert sum(1 for n in calls.values() if n) >= 2
    # each node's share went down one connection
    clients = redis_cluster_nodes.evalsha_clients()
    assert all(clients[port] == 1 for port in expected)
    assert len(ids) == len(set(ids)) == len(tasks)
    length = sum(
        redis_cluster_nodes.client(port).xlen(keys.stream(p, Priority.NORMAL))
        for p, port in where.items()
    )
    assert length == 2 * len(tasks)  # the NOSCRIPT round ran each call once


def test_append_after_slot_migration_runs_once(
    qm: QueueManager, redis_cluster_nodes: RedisClusterNodes
) -> None:
    cluster = redis_cluster_nodes
    user = "mover"
    p = keys.partition_of(user, PARTITIONS)
    slot = slot_of(p)
    home = cluster.owner(slot)
    away = next(n.port for n in cluster.nodes if n.port != home)
    qm.register_user(user, "mover@example.com")
    qm.purchase(user, 100, transaction_id="pay-1")
    stream = keys.stream(p, Priority.NORMAL)
    client: Any = qm.redis  # a RedisCluster; its slot table is untyped

    def owner_seen_by_client() -> int:
        return int(client.nodes_manager.get_node_from_slot(slot).port)

    try:
        cluster.migrate_slot(slot, away, finish=False)  # the keys moved; the slot not yet
        assert owner_seen_by_client() == home
        # the old owner has none of the call's keys: ASK; ASKING + EVALSHA on the new one
        during = qm.purchase(user, 5, transaction_id="pay-2")
        assert owner_seen_by_client() == home  # ASK leaves the slot table alone
        cluster.finish_slot(slot, away)
        # the client's slot table still names the old owner: MOVED, then the new one
        after = qm.purchase(user, 7, transaction_id="pay-3")
        assert owner_seen_by_client() == away
        retry = qm.purchase(user, 5, transaction_id="pay-2")
        balance = state(qm, user)
        with cluster.client(away) as c:
            length = c.xlen(stream)
        with cluster.client(home) as c:
            left = c.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
    finally:
        cluster.migrate_slot(slot, home)
    assert left == 0
    assert (during.version, after.version) == (3, 4)
    assert (retry.event_id, retry.duplicate) == (during.event_id, True)
    assert (balance["balance"], balance["version"]) == (112, 4)
    assert length == 4  # register, pay-1, pay-2, pay-3: each once


@pytest.mark.slow
def test_a_script_call_whose_reply_is_lost_is_not_resent(
    redis_cluster: str, redis_cluster_nodes: RedisClusterNodes
) -> None:
    cluster = redis_cluster_nodes
    home = cluster.nodes[0].port  # the startup node: its own view changes at once
    user = next(
        u
        for u in (f"lost-{i}" for i in range(1000))
        if owners(cluster)[keys.partition_of(u, PARTITIONS)] == home
    )
    p = keys.partition_of(user, PARTITIONS)
    proxy = ReplyDropper((LOOPBACK, home))
    try:
        cluster.announce(home, proxy.port)  # clients reach this master through the proxy
        qm = QueueManager(
            config=StreamsConfig(redis_url=redis_cluster, partitions=PARTITIONS),
            registry=HandlerRegistry(),
        )
        try:
            qm.register_user(user, f"{user}@example.com")
            qm.purchase(user, 100, transaction_id="pay-1")
            proxy.armed.set()
            with pytest.raises(Unavailable):
                qm.use(user, 30, reason="lost reply")
            assert proxy.dropped.is_set()
            with cluster.client(home) as c:
                assert c.hmget(keys.account(p, user), "version", "balance") == [b"3", b"70"]
            # the client recovers on a fresh connection
            assert qm.use(user, 30, reason="next").balance == 40
        finally:
            qm.close()
    finally:
        proxy.close()
        cluster.announce(home, None)
    with cluster.client(home) as c:
        assert c.xlen(keys.stream(p, Priority.NORMAL)) == 4


def test_holds_and_their_expiry_on_cluster(
    qm: QueueManager, redis_cluster_nodes: RedisClusterNodes
) -> None:
    """Holds touch the account, its holds hash and the partition's due set: one slot;
    the scheduler's sweep reads every partition's due set, on every master."""
    import time

    from ledger.errors import HoldNotOpen
    from streams.holds import expire_due, pending_holds

    users = users_on(redis_cluster_nodes, 6)
    for u in users:
        qm.register_user(u, f"{u}@example.com")
        qm.purchase(u, 100, transaction_id=f"h-{u}")
    made = [qm.hold(u, 30, 1) for u in users]
    kept = qm.hold(users[0], 10, 600, idempotency_key="keep")
    assert qm.hold(users[0], 10, 600, idempotency_key="keep").hold_id == kept.hold_id
    assert qm.capture(users[0], kept.hold_id, 4).balance == 96
    with pytest.raises(HoldNotOpen):
        qm.release(users[0], kept.hold_id)
    assert [state(qm, u)["held"] for u in users] == [30] * len(users)
    time.sleep(1.05)
    assert expire_due(qm.redis, qm.appender, PARTITIONS) == len(made)
    assert pending_holds(qm.redis, PARTITIONS) == 0
    assert [state(qm, u)["held"] for u in users] == [0] * len(users)
    # the audit reads an account's state and open holds in one MULTI (one slot)
    from projections.audit import _hold_states

    qm.hold(users[1], 7, 600)
    states: dict[str, dict[str, str]] = {u: {"hseq": "?"} for u in users}
    holds = _hold_states(qm.redis, PARTITIONS, states)
    assert states[users[1]]["held"] == "7" and list(holds[users[1]]) == [f"{users[1]}:h2"]
