"""``wait_replicas`` on a real Redis Cluster with replicas, and appends through a
master's failover.

Each test gets its own cluster: 3 masters with one replica each
(``node_timeout_ms=1000``: a SIGKILLed master's replica takes over in ~2.5 s),
every node stopped when the test ends, whatever happens. (Not one per module:
the tests kill nodes and start them again, and the suite guard rightly counts
a node started during a test and still running after it as a leftover.)

a. ``WAIT`` goes to every master an append batch was written on, on the
   connection the writes went through; a master whose replica is gone answers
   ``Unavailable``, the write stays, and the retry with the same key finds it.
b. Producers (threads, one ``QueueManager`` each; two with
   ``wait_replicas=1``, two without, side by side) append through the SIGKILL
   of a master, retrying every ``Unavailable`` with the same Idempotency-Key
   until acknowledged, and keep going on the failed-over shard with the same
   clients. Then every acknowledged append must be in the log with the version
   and balance it was acknowledged with: with ``WAIT`` none may be lost;
   without it the losses are measured (on loopback replication is fast:
   usually none).
c. A replica cut off from its master (its resync refused by ACL) before the
   master dies shows the risk deterministically: every append acknowledged
   without ``WAIT`` while it was cut off is lost; with ``WAIT`` none was
   acknowledged, and their retries append them on the new master.

The figures are printed (``pytest -s``) on ``FIGURES`` lines.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
from pymongo.database import Database
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from api.dev.cluster import RedisClusterNodes
from api.dev.embedded import LOOPBACK
from ledger.commands import Command, Purchase, RegisterUser, Use
from ledger.tasks import Priority
from projections.audit import (
    CHAIN_BROKEN,
    DUPLICATE,
    INTEGRITY,
    STATE,
    UNDECODABLE,
    VERSION_GAP,
    audit,
)
from streams import HandlerRegistry, QueueManager, StreamsConfig, Unavailable, keys
from streams.appender import Appended
from streams.queue_manager import TASK_ID_NAMESPACE
from tests.helpers import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PARTITIONS = 8
NODE_TIMEOUT_MS = 1000
WAIT_TIMEOUT_MS = 300
START = 1_000_000
"""Credits every account starts with: a use never meets an empty account."""


# -- the cluster ---------------------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterNodes]:
    """3 masters, one replica each; every node stopped when the test ends."""
    nodes = RedisClusterNodes(
        tmp_path / "cluster", masters=3, replicas=1, node_timeout_ms=NODE_TIMEOUT_MS
    )
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


def qm_on(cluster: RedisClusterNodes, wait: int) -> QueueManager:
    return QueueManager(
        config=StreamsConfig(
            redis_url=cluster.url,
            partitions=PARTITIONS,
            wait_replicas=wait,
            wait_timeout_ms=WAIT_TIMEOUT_MS,
        ),
        registry=HandlerRegistry(),
    )


def slot_of_user(user: str) -> int:
    return key_slot(keys.account(keys.partition_of(user, PARTITIONS), user).encode())


def users_by_master(
    cluster: RedisClusterNodes, per_master: int, prefix: str
) -> dict[int, list[str]]:
    """{master port: ``per_master`` user ids whose partition that master holds}"""
    owners: dict[int, int] = {}  # slot -> port
    found: dict[int, list[str]] = {port: [] for port in cluster.masters_now()}
    i = 0
    while any(len(users) < per_master for users in found.values()):
        user = f"{prefix}-{i}"
        slot = slot_of_user(user)
        if slot not in owners:
            owners[slot] = cluster.owner(slot)
        if len(found[owners[slot]]) < per_master:
            found[owners[slot]].append(user)
        i += 1
    return found


def open_accounts(qm: QueueManager, users: Iterable[str]) -> None:
    """Register ``users`` with ``START`` credits each (confirmed when ``qm`` waits)."""
    users = list(users)
    items: list[tuple[Command, Priority, str | None]] = []
    for u in users:
        items.append((RegisterUser(user_id=u, email=f"{u}@example.com"), Priority.NORMAL, None))
        items.append(
            (Purchase(user_id=u, amount=START, transaction_id=f"init-{u}"), Priority.NORMAL, None)
        )
    results = qm.append_batch(items)
    assert all(isinstance(r, Appended) for r in results), results


def command_stats(cluster: RedisClusterNodes, command: str, what: str = "calls") -> dict[int, int]:
    """{port: ``what`` (calls, failed_calls, rejected_calls: e.g. MOVED) of ``command``
    since the last reset} of every running node."""
    calls = {}
    for node in cluster.running():
        with cluster.client(node.port) as c:
            stats = c.info("commandstats").get(f"cmdstat_{command}", {})
        calls[node.port] = int(stats.get(what, 0))
    return calls


def replica_read(port: int, key: str, field: str) -> bytes | None:
    """``HGET key field`` on a replica (READONLY: a replica serves its own copy)."""
    with redis_py.Redis(
        host=LOOPBACK, port=port, socket_timeout=10, single_connection_client=True
    ) as c:
        c.execute_command("READONLY")
        value: bytes | None = c.hget(key, field)
        return value


# -- a. WAIT on every master ----------------------------------------------------------------------


def test_each_master_waits_for_its_replica_and_a_missing_one_is_unavailable(
    cluster: RedisClusterNodes,
) -> None:
    by_master = users_by_master(cluster, 2, "w")
    masters = sorted(by_master)
    users = [u for port in masters for u in by_master[port]]
    qm = qm_on(cluster, wait=1)
    try:
        open_accounts(qm, users)  # also loads the scripts: no NOSCRIPT round below
        cluster.reset_stats()
        results = qm.append_batch(
            [
                (Purchase(user_id=u, amount=10, transaction_id=f"t-{u}"), Priority.HIGH, f"k-{u}")
                for u in users
            ]
        )
        assert [
            (r.version, r.balance, r.duplicate) for r in results if isinstance(r, Appended)
        ] == [(3, START + 10, False)] * len(users)
        waits = command_stats(cluster, "wait")
        evalsha = command_stats(cluster, "evalsha")
        replicas = [n.port for n in cluster.running() if n.port not in masters]
        assert {p: waits[p] for p in masters} == dict.fromkeys(masters, 1)  # one per master
        assert all(evalsha[p] >= 1 for p in masters)  # each master was written on
        assert all(waits[p] == evalsha[p] == 0 for p in replicas)
        # each connection that ran an EVALSHA ran a WAIT after it: none stops at EVALSHA
        assert all(n == 0 for n in cluster.evalsha_clients().values())
        for port in masters:  # answered means on the replica
            (replica,) = cluster.replica_of(port)
            for u in by_master[port]:
                key = keys.account(keys.partition_of(u, PARTITIONS), u)
                assert replica_read(replica, key, "balance") == str(START + 10).encode()

        # the replica of one master is gone: that master's appends are not confirmed
        victim, healthy = masters[0], masters[1]
        (replica,) = cluster.replica_of(victim)
        cluster.kill(replica)
        user, other = by_master[victim][0], by_master[healthy][0]
        with pytest.raises(Unavailable, match=rf"on {LOOPBACK}:{victim}, but only 0 of 1 replicas"):
            qm.use(user, 3, reason="unconfirmed", idempotency_key="use-1")
        state = qm.balance(user)
        assert state is not None and (state["version"], state["balance"]) == (4, START + 7)
        assert qm.use(other, 3, reason="fine", idempotency_key="use-2").version == 4
        with pytest.raises(Unavailable, match=f"{LOOPBACK}:{victim}"):  # a batch, as a whole
            qm.append_batch(
                [
                    (Use(user_id=other, amount=1, reason="b"), Priority.NORMAL, "use-3"),
                    (Use(user_id=user, amount=1, reason="b"), Priority.NORMAL, "use-4"),
                ]
            )
        task_key = next(
            k
            for k in (f"task-{i}" for i in range(10_000))
            if cluster.owner(key_slot(keys.task(task_partition(k), task_id(k)).encode())) == victim
        )
        with pytest.raises(Unavailable):
            qm.enqueue("default", "credit_calculation", {"user_id": user}, idempotency_key=task_key)
        assert qm.get_task_status(task_id(task_key)) is not None  # queued, unconfirmed

        cluster.restart(replica)  # it rejoins and resyncs: WAIT can be met again
        again = qm.use(user, 3, reason="unconfirmed", idempotency_key="use-1")
        assert (again.event_id, again.version, again.duplicate) == (f"{user}:4", 4, True)
        rest = qm.append_batch(
            [
                (Use(user_id=other, amount=1, reason="b"), Priority.NORMAL, "use-3"),
                (Use(user_id=user, amount=1, reason="b"), Priority.NORMAL, "use-4"),
            ]
        )
        assert [(r.version, r.duplicate) for r in rest if isinstance(r, Appended)] == [
            (5, True),
            (5, True),
        ]
        tid = qm.enqueue(
            "default", "credit_calculation", {"user_id": user}, idempotency_key=task_key
        )
        assert tid == task_id(task_key)
        key = keys.account(keys.partition_of(user, PARTITIONS), user)
        assert replica_read(replica, key, "version") == b"5"

        # a graceful failover the client has not heard of: its slot table still
        # names the old master, now a replica, which answers MOVED; the call goes
        # again to the new master, on another connection, with its own WAIT
        (promoted,) = cluster.replica_of(healthy)
        with cluster.client(promoted) as c:
            c.execute_command("CLUSTER", "FAILOVER")
        deadline = time.monotonic() + 20
        while promoted not in cluster.masters_now() or healthy not in cluster.replica_of(promoted):
            assert time.monotonic() < deadline, "the manual failover did not complete"
            time.sleep(0.05)
        cluster.wait_ready()
        cluster.reset_stats()
        moved = qm.use(other, 1, reason="moved", idempotency_key="use-5")
        assert (moved.version, moved.duplicate) == (6, False)
        # the old master refused the call (MOVED) and its WAIT (a replica), not judged;
        # the new one answered NOSCRIPT (SCRIPT LOAD is not replicated), then ran it:
        # a WAIT behind each of its two rounds
        stats = {
            (command, what): command_stats(cluster, command, what)
            for command in ("evalsha", "wait")
            for what in ("calls", "failed_calls", "rejected_calls")
        }
        assert [stats[c, w][healthy] for c, w in stats] == [0, 0, 1, 1, 1, 0]
        assert [stats[c, w][promoted] for c, w in stats] == [2, 1, 0, 2, 0, 0]
        key = keys.account(keys.partition_of(other, PARTITIONS), other)
        assert replica_read(healthy, key, "version") == b"6"
    finally:
        qm.close()


def task_id(idempotency_key: str) -> str:
    return str(uuid.uuid5(TASK_ID_NAMESPACE, idempotency_key))


def task_partition(idempotency_key: str) -> Any:
    return keys.partition_of(task_id(idempotency_key), PARTITIONS)


# -- b. failover under load ---------------------------------------------------------------------

RETRY = (Unavailable, RedisError, RedisClusterException)
"""What a producer retries (with the same key); anything but Unavailable is counted apart:
the QueueManager should turn every Redis failure into Unavailable."""


@dataclass(frozen=True, slots=True)
class Ack:
    user: str
    key: str
    """Idempotency-Key, also the purchase's transaction id or the use's reason."""
    version: int
    balance: int
    duplicate: bool
    at: float


class Producer(threading.Thread):
    """Appends purchases and uses round the given accounts, each with its own
    Idempotency-Key, retrying it after every failure until acknowledged."""

    def __init__(self, name: str, cluster: RedisClusterNodes, wait: int, users: list[str]) -> None:
        super().__init__(name=f"producer-{name}", daemon=True)
        self.tag = name
        self.qm = qm_on(cluster, wait)
        self.wait = wait
        self.users = users
        self.stop = threading.Event()
        """No new append after this."""
        self.give_up = threading.Event()
        """Not even the retry of an unacknowledged one."""
        self.acked: list[Ack] = []
        self.errors: Counter[str] = Counter()
        self.failed: BaseException | None = None

    def run(self) -> None:
        try:
            i = 0
            while not self.stop.is_set():
                user = self.users[i % len(self.users)]
                key = f"{self.tag}-{i}"
                command: Command = (
                    Use(user_id=user, amount=1, reason=key)
                    if i % 3 == 2
                    else Purchase(user_id=user, amount=1 + i % 7, transaction_id=key)
                )
                result = self._until_acked(command, key)
                if result is None:
                    return
                self.acked.append(
                    Ack(
                        user,
                        key,
                        result.version,
                        result.balance,
                        result.duplicate,
                        time.monotonic(),
                    )
                )
                i += 1
                time.sleep(0.002)  # 2 cores for everything: leave the nodes room to fail over
        except BaseException as exc:  # the test reports it
            self.failed = exc
        finally:
            self.qm.close()

    def _until_acked(self, command: Command, key: str) -> Appended | None:
        while not self.give_up.is_set():
            try:
                return self.qm.append(command, priority=Priority.NORMAL, idempotency_key=key)
            except RETRY as exc:
                self.errors[type(exc).__name__] += 1
                time.sleep(0.05)
        return None

    def acked_since(self, t: float, users: set[str]) -> int:
        return sum(1 for a in list(self.acked) if a.at >= t and a.user in users)


def stop_all(producers: list[Producer]) -> None:
    for p in producers:
        p.stop.set()
    for p in producers:
        p.join(timeout=15)
    for p in producers:
        p.give_up.set()
        p.join(timeout=15)
    assert not any(p.is_alive() for p in producers), "a producer did not stop"


def logged(client: Any, users: Iterable[str]) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """{(user, purchase transaction id or use reason): [(version, balance) of each entry]}
    from every stream the users' partitions have."""
    streams = {
        keys.stream(keys.partition_of(u, PARTITIONS), level)
        for u in users
        for level in keys.LEVELS_DESC
    }
    found: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for stream in sorted(streams):
        for _, fields in client.xrange(stream):
            if fields.get(b"k") == b"task":
                continue
            user = fields[b"u"].decode()
            ref = (fields.get(b"r") or fields[b"tx"]).decode()
            found.setdefault((user, ref), []).append((int(fields[b"v"]), int(fields[b"b"])))
    return found


def lost_of(acked: Iterable[Ack], log: dict[tuple[str, str], list[tuple[int, int]]]) -> list[Ack]:
    """The acknowledged appends not in the log as they were acknowledged."""
    return [a for a in acked if log.get((a.user, a.key)) != [(a.version, a.balance)]]


def test_acknowledged_appends_survive_a_master_failover_under_load(
    cluster: RedisClusterNodes, mongo_db: Database[Any]
) -> None:
    by_master = users_by_master(cluster, 4, "load")
    users = [u for group in by_master.values() for u in group]
    first = cluster.running()[0].port  # the clients' startup node: the hardest case
    victim = first if first in by_master else sorted(by_master)[0]
    shard = set(by_master[victim])
    setup = qm_on(cluster, wait=1)
    try:
        open_accounts(setup, users)
    finally:
        setup.close()

    producers = [
        Producer(f"w{wait}p{n}", cluster, wait, users[k:] + users[:k])
        for n, (wait, k) in enumerate([(1, 0), (1, 5), (0, 2), (0, 7)])
    ]
    try:
        for p in producers:
            p.start()
        t0 = time.monotonic()
        while not all(p.acked_since(t0, shard) >= 20 for p in producers):  # load on the victim
            assert time.monotonic() - t0 < 20 and not any(p.failed for p in producers)
            time.sleep(0.05)
        acked_at_kill = [len(p.acked) for p in producers]
        t_kill = time.monotonic()
        successor = cluster.fail_master(victim)  # SIGKILL; its replica takes over
        t_failover = time.monotonic() - t_kill
        cluster.restart(victim)  # back as the successor's replica: WAIT 1 can be met again
        t_recovered = time.monotonic()
        t_restart = t_recovered - t_kill - t_failover
        # the same clients, not restarted, append to the failed-over shard again
        while not all(p.acked_since(t_recovered, shard) >= 10 for p in producers):
            assert time.monotonic() - t_recovered < 30, [p.errors for p in producers]
            assert not any(p.failed for p in producers), [p.failed for p in producers]
            time.sleep(0.05)
        t_back = time.monotonic() - t_recovered
    finally:
        stop_all(producers)
    assert not any(p.failed for p in producers), [p.failed for p in producers]
    assert successor in cluster.masters_now() and victim in cluster.replica_of(successor)

    reader = qm_on(cluster, wait=0)
    try:
        log = logged(reader.redis, users)
        report = audit(reader.redis, PARTITIONS, mongo_db)
        states = {u: reader.balance(u) for u in users}
    finally:
        reader.close()
    for wait in (1, 0):
        group = [p for p in producers if p.wait == wait]
        acked = [a for p in group for a in p.acked]
        errors = sum((p.errors for p in group), Counter[str]())
        lost = lost_of(acked, log)
        before = sum(n for p, n in zip(producers, acked_at_kill, strict=True) if p.wait == wait)
        print(
            f"\nFIGURES failover under load, wait_replicas={wait}: {len(acked)} appends "
            f"acknowledged ({before} before the SIGKILL, {sum(a.duplicate for a in acked)} "
            f"as repeats), {len(lost)} lost; failover {t_failover:.1f}s, old master back as "
            f"a replica {t_restart:.1f}s later, {t_back:.1f}s to 10 more acks on the shard "
            f"per producer; "
            f"retried failures: {dict(errors)}"
        )
        assert set(errors) <= {"Unavailable"}, (
            f"a Redis error leaked past the QueueManager: {errors}"
        )
        if wait:
            assert lost == [], f"acknowledged with WAIT, then lost: {lost}"
    twice = {k: v for k, v in log.items() if len(v) > 1}
    assert not twice, f"appended twice through the failover: {twice}"
    # the log agrees with itself and with the account states (views are not built here)
    log_checks = {VERSION_GAP, CHAIN_BROKEN, INTEGRITY, STATE, DUPLICATE, UNDECODABLE}
    assert [m for m in report.mismatches if m.what in log_checks] == []
    for u in users:  # versions 1..n, the state at the last
        state = states[u]
        events = sorted(v for (user, _), entries in log.items() if user == u for v in entries)
        assert [v for v, _ in events] == list(range(1, len(events) + 1))
        assert state is not None
        assert (state["version"], state["balance"]) == (len(events), events[-1][1])


# -- c. a replica cut off before its master dies -------------------------------------------------


def cut_off(cluster: RedisClusterNodes, master: int) -> None:
    """The master's replica loses its link and cannot sync again (ACL refuses
    SYNC and PSYNC): writes from now on reach the master only."""
    with cluster.client(master) as c:
        c.execute_command("ACL", "SETUSER", "default", "-sync", "-psync")
        c.execute_command("CLIENT", "KILL", "TYPE", "replica")
        deadline = time.monotonic() + 10
        while c.info("replication")["connected_slaves"]:
            assert time.monotonic() < deadline, "the replica did not go"
            time.sleep(0.02)


def test_appends_acknowledged_while_the_replica_was_cut_off(cluster: RedisClusterNodes) -> None:
    by_master = users_by_master(cluster, 2, "cut")
    victim = sorted(by_master)[1]
    users = by_master[victim]
    setup = qm_on(cluster, wait=1)
    try:
        open_accounts(setup, users)
    finally:
        setup.close()
    clients = {wait: qm_on(cluster, wait) for wait in (1, 0)}
    acked: dict[int, list[Ack]] = {1: [], 0: []}
    refused: dict[int, list[tuple[str, str]]] = {1: [], 0: []}
    try:
        cut_off(cluster, victim)
        for i in range(16):  # alternately with and without WAIT
            wait, user, key = i % 2, users[i % len(users)], f"cut-{i}"
            try:
                r = clients[wait].purchase(user, 5, transaction_id=key, idempotency_key=key)
            except Unavailable:
                refused[wait].append((user, key))
            else:
                acked[wait].append(Ack(user, key, r.version, r.balance, r.duplicate, 0.0))
        cluster.fail_master(victim)  # SIGKILL; the cut-off replica takes over
        log = logged(clients[0].redis, users)
        cluster.restart(victim)
        # the refused ones, retried with their keys by the same client, as a client
        # does: again while the rejoined replica has not confirmed yet (503)
        retried = [
            eventually(
                partial(clients[1].purchase, user, 5, transaction_id=key, idempotency_key=key),
                timeout=20,
                ignoring=(Unavailable,),
                message=f"{key} never acknowledged after the failover",
            )
            for user, key in refused[1]
        ]
        after = logged(clients[0].redis, users)
    finally:
        for qm in clients.values():
            qm.close()
    lost = {wait: lost_of(acked[wait], log) for wait in (1, 0)}
    unconfirmed_lost = [k for k in refused[1] if k not in log]
    for wait in (1, 0):
        print(
            f"\nFIGURES replica cut off, then its master SIGKILLed, wait_replicas={wait}: "
            f"{len(acked[wait])} appends acknowledged, {len(lost[wait])} of them lost; "
            f"{len(refused[wait])} answered Unavailable"
            + (
                f" ({len(unconfirmed_lost)} of those not on the new master; all appended "
                "by their retry with the same key)"
                if wait
                else ""
            )
        )
    assert (len(acked[0]), refused[0], len(lost[0])) == (8, [], 8)  # every one: never replicated
    assert (acked[1], len(refused[1]), lost[1]) == ([], 8, [])
    assert len(unconfirmed_lost) == 8 and len(retried) == 8
    # a retry may itself be answered 503 (the rejoined replica had not confirmed it
    # yet) and the next one then replays it: whichever, each is in the log once
    assert all(len(after.get(k, [])) == 1 for k in refused[1])
