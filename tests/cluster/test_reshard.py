"""Resharding a real 3-master Redis Cluster under load.

Producer threads append credit events (each with its own Idempotency-Key,
retried with that key until answered) and enqueue tasks (some delayed) through
``QueueManager`` on the cluster URL, while real ``ledger worker`` (two),
``ledger project`` and ``ledger scheduler`` processes consume. Meanwhile the
slots of several partitions move from one master to another key batch by key
batch (``RedisClusterNodes.migrate_slot``, as ``redis-cli --cluster reshard``
does), so the clients meet ASK (keys already moved), TRYAGAIN (a multi-key
script whose keys are split, or not all there yet, on the way) and MOVED (a
stale slot table afterwards); one migration stays half-done for a while (every
key moved, the slot still MIGRATING/IMPORTING) before it is finished, and then
every slot moves back, still under load.

Afterwards nothing is lost (every acknowledged append is in the log once, as
acknowledged, and nothing else is; versions are gap-free per account), nothing
is doubled (every task ran once: the handler counts its runs), the read models
match the log and ``ledger audit`` is clean.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from pymongo.database import Database
from redis.crc import key_slot

from api.dev.cluster import RedisClusterNodes
from api.dev.deployment import Deployment
from ledger.accounts import fold
from ledger.errors import InsufficientCredits
from ledger.tasks import DEFAULT_COLLECTIONS, Priority
from projections.store import MongoDBManager
from streams import HandlerRegistry, QueueManager, StreamsConfig, Unavailable, keys, scripts
from streams.codec import event_id
from streams.connection import RedisClient, connect
from tests.helpers import eventually
from tests.streamlog import account_histories

from . import handlers
from .conftest import PARTITIONS, audit_report, log_tail

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PRODUCERS = 3
USERS_PER_PRODUCER = 8
MOVES = 3
"""Partitions whose slot moves (and moves back)."""
HALF_DONE_S = 1.0
"""How long one migration stays half-done (keys moved, slot not reassigned)."""
RETRY_FOR_S = 20.0
"""How long a producer retries one operation that got no answer."""
WORKER = [
    "worker",
    "--import",
    "tests.cluster.handlers",
    "--concurrency",
    "2",
    "--claim-idle-ms",
    "5000",
    "--backoff-ms",
    "50",
]


def slot_of(p: keys.Partition) -> int:
    """The slot of partition ``p``: every key of a partition shares it (asserted)."""
    slots = {key_slot(keys.stream(p, level).encode()) for level in keys.LEVELS_DESC}
    slots |= {
        key_slot(k.encode())
        for k in (
            keys.account(p, "u"),
            keys.idempotency(p, "u", "k"),
            keys.task(p, "t"),
            keys.scheduled(p),
            keys.attempts(p),
            keys.retry(p, "workers"),
            keys.dead(p),
        )
    }
    assert len(slots) == 1, f"partition {p} spans slots {slots}"
    return slots.pop()


@dataclass
class Producer:
    """A thread of traffic: appends with keys and enqueues, retried until answered."""

    name: str
    url: str
    users: list[str]
    seed: int
    stop: threading.Event
    acks: list[tuple[str, str, int, int]] = field(default_factory=list)
    """(idempotency key, event id, version, balance) of every acknowledged append."""
    refused: int = 0
    repeats: int = 0
    tasks: dict[str, str] = field(default_factory=dict)
    """{ref: task id} of every acknowledged enqueue."""
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    """When each append or enqueue was acknowledged (monotonic)."""

    def attempt(self, call: Any) -> Any:
        deadline = time.monotonic() + RETRY_FOR_S
        while True:
            try:
                return call()
            except Unavailable:  # no answer: the same key again
                self.retries += 1
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def run(self) -> None:
        qm = QueueManager(
            config=StreamsConfig(redis_url=self.url, partitions=PARTITIONS),
            registry=HandlerRegistry(),
        )
        rng = random.Random(self.seed)
        try:
            for user in self.users:
                key = f"{self.name}-reg-{user}"
                done = self.attempt(
                    lambda u=user, k=key: qm.register_user(u, f"{u}@example.com", idempotency_key=k)
                )
                self.ack(key, done)
            n = 0
            while not self.stop.is_set():
                n += 1
                key = f"{self.name}-{n}"
                user = rng.choice(self.users)
                roll = rng.random()
                if roll < 0.3:
                    ref = f"{self.name}-task-{n}"
                    delay = 0.5 if rng.random() < 0.2 else 0
                    task_id = self.attempt(
                        lambda r=ref, d=delay: qm.enqueue(
                            "default",
                            handlers.TASK_TYPE,
                            {"ref": r},
                            delay=d,
                            idempotency_key=r,
                        )
                    )
                    self.tasks[ref] = task_id
                    self.times.append(time.monotonic())
                elif roll < 0.6:
                    amount = rng.randint(20, 80)
                    done = self.attempt(
                        lambda u=user, a=amount, k=key: qm.purchase(
                            u,
                            a,
                            transaction_id=f"t-{k}",
                            priority=Priority.HIGH,
                            idempotency_key=k,
                        )
                    )
                    self.ack(key, done)
                else:
                    amount = rng.randint(5, 60)
                    try:
                        done = self.attempt(
                            lambda u=user, a=amount, k=key: qm.use(
                                u, a, reason="reshard", idempotency_key=k
                            )
                        )
                    except InsufficientCredits:
                        self.refused += 1
                        continue
                    self.ack(key, done)
                    if rng.random() < 0.1:  # a client retrying an answered request
                        again = self.attempt(
                            lambda u=user, a=amount, k=key: qm.use(
                                u, a, reason="reshard", idempotency_key=k
                            )
                        )
                        self.repeats += 1
                        if (again.event_id, again.duplicate) != (done.event_id, True):
                            self.errors.append(f"repeat of {key}: {again} != {done}")
                time.sleep(0.002)
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            qm.close()

    def ack(self, key: str, done: Any) -> None:
        self.acks.append((key, done.event_id, done.version, done.balance))
        self.times.append(time.monotonic())


REDIRECTIONS = ("MOVED", "ASK", "TRYAGAIN", "NOSCRIPT")


def redirections(cluster: RedisClusterNodes) -> Counter[str]:
    """The MOVED, ASK, TRYAGAIN and NOSCRIPT replies of every master since the
    last reset_stats() (``INFO errorstats``; redis-py's CLIENT SETINFO on each new
    connection fills "ERR" on Redis 7.0, so not every error counts)."""
    out: Counter[str] = Counter()
    for port in cluster.masters_now():
        with cluster.client(port) as c:
            for name, stats in c.info("errorstats").items():
                if (kind := name.removeprefix("errorstat_")) in REDIRECTIONS:
                    out[kind] += int(stats["count"])
    return out


def backlog(client: RedisClient) -> int:
    """Entries not yet read or not yet acknowledged by any group, and delayed tasks."""
    total = 0
    for p in keys.partitions(PARTITIONS):
        total += int(client.zcard(keys.scheduled(p)))
        total += int(client.zcard(keys.retry(p, "workers")))
        for level in keys.LEVELS_DESC:
            for group in client.xinfo_groups(keys.stream(p, level)):
                total += int(group["pending"]) + int(group["lag"] or 0)
    return total


def restore(cluster: RedisClusterNodes, slot: int, home: int, away: int) -> None:
    """Give ``slot`` back to ``home`` with all its keys, from wherever a failed
    test left it (on ``away``, or half-way in either direction)."""
    with cluster.client(away) as c:
        there = int(c.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot))
    if cluster.owner(slot) == away or there:
        cluster.finish_slot(slot, away)  # (settles a half-done migration first)
        cluster.migrate_slot(slot, home)
    else:
        cluster.finish_slot(slot, home)  # (ends an IMPORTING/MIGRATING state)


@pytest.mark.timeout(120)
def test_resharding_under_load_loses_and_doubles_nothing(
    cluster_deployment: Deployment,
    redis_cluster_nodes: RedisClusterNodes,
    redis_cluster: str,
    mongo_db: Database[Any],
) -> None:
    began = time.monotonic()
    cluster = redis_cluster_nodes
    deployment = cluster_deployment
    slots = {p: slot_of(p) for p in keys.partitions(PARTITIONS)}
    home = {p: cluster.owner(s) for p, s in slots.items()}
    by_master = Counter(home.values())
    source = by_master.most_common(1)[0][0]
    target = next(port for port in cluster.masters_now() if port != source)
    moving = [p for p in keys.partitions(PARTITIONS) if home[p] == source][:MOVES]
    assert len(moving) >= 2, f"too few partitions on one master: {home}"

    deployment.start("worker-0", *WORKER)
    deployment.start("worker-1", *WORKER)
    deployment.start("project", "project", "--batch", "500", "--claim-idle-ms", "5000")
    deployment.start("scheduler", "scheduler")
    stop = threading.Event()
    producers = [
        Producer(
            f"p{i}",
            redis_cluster,
            [f"rs{i}-{u}" for u in range(USERS_PER_PRODUCER)],
            seed=20261202 + i,
            stop=stop,
        )
        for i in range(PRODUCERS)
    ]
    threads = [threading.Thread(target=p.run, name=f"producer-{p.name}") for p in producers]
    client = connect(redis_cluster)
    moved_keys: dict[int, int] = {}
    restored = False

    def check_running() -> None:
        gone = deployment.exited()
        if gone:
            pytest.fail(f"exited: {gone}\n{log_tail(deployment)}")
        errors = [e for p in producers for e in p.errors]
        if errors:
            pytest.fail(f"producer errors: {errors[:5]}")

    try:
        for t in threads:
            t.start()
        time.sleep(1.5)  # traffic first, so the slots hold keys to move
        check_running()
        moves_began = time.monotonic()
        # -- move: key batch by key batch; the last one stays half-done a while ---------
        for p in moving:
            check_running()
            with cluster.client(source) as c:
                moved_keys[p] = int(c.execute_command("CLUSTER", "COUNTKEYSINSLOT", slots[p]))
            if p == moving[-1]:
                cluster.migrate_slot(slots[p], target, finish=False)
                time.sleep(HALF_DONE_S)  # the owner answers ASK; new keys meet TRYAGAIN
                check_running()
                cluster.finish_slot(slots[p], target)
            else:
                cluster.migrate_slot(slots[p], target)
            time.sleep(0.3)
        assert all(cluster.owner(slots[p]) == target for p in moving)
        time.sleep(1.0)  # clients with the old slot table meet MOVED
        # -- and back, still under load -----------------------------------------------------
        for p in moving:
            check_running()
            with cluster.client(target) as c:
                moved_keys[p] += int(c.execute_command("CLUSTER", "COUNTKEYSINSLOT", slots[p]))
            cluster.migrate_slot(slots[p], source)
            time.sleep(0.3)
        restored = True
        moves_ended = time.monotonic()
        time.sleep(1.0)
        check_running()
    finally:
        stop.set()
        for t in threads:
            t.join(RETRY_FOR_S + 10)
        if not restored:  # leave the session's cluster as it was for the next tests
            for p in moving:
                restore(cluster, slots[p], home[p], target)
    redirected = redirections(cluster)
    try:
        errors = [e for p in producers for e in p.errors]
        assert not errors, errors[:10]

        # -- drain: every task run, every entry settled, every projection caught up -----------
        def drained() -> bool:
            check_running()
            left = backlog(client)
            assert left == 0, f"{left} entries or tasks left"
            return True

        eventually(
            drained,
            timeout=45,
            interval=0.3,
            message=lambda: f"not drained\n{log_tail(deployment)}",
        )

        # -- nothing lost, nothing unacknowledged, versions gap-free ---------------------------
        acks = [a for p in producers for a in p.acks]
        histories = account_histories(client, PARTITIONS)
        users = sorted(u for p in producers for u in p.users)
        assert sorted(histories) == users
        for user, events in histories.items():
            assert [e.version for e in events] == list(range(1, len(events) + 1)), user
        logged = {event_id(e.user_id, e.version): e for es in histories.values() for e in es}
        acked: dict[str, tuple[int, int]] = {}
        for key, eid, version, balance in acks:
            assert eid in logged, f"acknowledged but not in the log: {key} {eid}"
            e = logged[eid]
            assert (e.version, e.after.balance) == (version, balance), (key, e)
            assert acked.setdefault(eid, (version, balance)) == (version, balance), key
        assert set(logged) == set(acked), sorted(set(logged) - set(acked))[:10]

        # -- Redis state and read models match the log -------------------------------------------
        qm = QueueManager(
            config=StreamsConfig(redis_url=redis_cluster, partitions=PARTITIONS),
            registry=HandlerRegistry(),
        )
        try:
            for user, events in histories.items():
                account = fold(events)
                assert account is not None
                state = qm.balance(user)
                assert state is not None
                assert (state["version"], state["balance"]) == (
                    account.version,
                    account.totals.balance,
                ), user
                doc = mongo_db.balances.find_one({"_id": user})
                assert doc is not None and (doc["version"], doc["balance"]) == (
                    account.version,
                    account.totals.balance,
                ), (user, doc)
            # -- every task ran once, and did its work once ------------------------------------
            tasks = {ref: tid for p in producers for ref, tid in p.tasks.items()}
            runs = handlers.runs(client)
            twice = {ref: dict(by) for ref, by in runs.items() if sum(by.values()) != 1}
            assert not twice, f"tasks not run exactly once: {list(twice.items())[:10]}"
            assert sorted(runs) == sorted(tasks)
            effects = Counter(d["ref"] for d in mongo_db[handlers.COLLECTION].find())
            assert effects == Counter(dict.fromkeys(tasks, 1))
            statuses = Counter(
                (qm.get_task_status(tid) or {}).get("status") for tid in tasks.values()
            )
            assert statuses == {"completed": len(tasks)}, statuses
            assert not qm.dead_letters(limit=10)
        finally:
            qm.close()
        assert mongo_db.events.count_documents({}) == len(logged)
        recorded = sum(
            mongo_db[c].count_documents({})
            for c in ("users", "credit_purchases", "credit_usage", "credit_updates")
        )
        assert recorded == len(logged)

        assert audit_report(deployment)["events"] == len(logged)
    finally:
        client.close()
    during = sum(1 for p in producers for t in p.times if moves_began <= t <= moves_ended)
    print(
        f"\nreshard: {len(moving)} slots moved {source} -> {target} and back "
        f"(~{sum(moved_keys.values())} keys, one left half-done {HALF_DONE_S:g}s); "
        f"{len(acked)} appends, {len(tasks)} tasks, {during} of them acknowledged during "
        f"{moves_ended - moves_began:.1f}s of moves; producer retries "
        f"{sum(p.retries for p in producers)}; redirections {dict(redirected)}; "
        f"lost 0, doubled 0; {time.monotonic() - began:.1f}s"
    )
    assert all(redirected[kind] > 0 for kind in ("ASK", "MOVED", "TRYAGAIN")), redirected


def test_a_round_settles_when_a_migration_outlasts_the_script_retries(
    redis_cluster: str,
    redis_cluster_nodes: RedisClusterNodes,
    mongo_db: Database[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The slot of a task's partition starts moving while its handler runs and stays
    half-done longer than ``run_many`` retries TRYAGAIN: the worker settles the round
    once the slot is reassigned instead of dropping the outcome (which would leave
    the task pending, to be claimed and run a second time)."""
    cluster = redis_cluster_nodes
    monkeypatch.setattr(scripts, "TRYAGAIN_FOR_S", 0.2)
    registry = HandlerRegistry()
    qm = QueueManager(
        config=StreamsConfig(redis_url=redis_cluster, partitions=PARTITIONS),
        db=MongoDBManager(mongo_db, DEFAULT_COLLECTIONS),
        registry=registry,
    )
    task_id = qm.enqueue("default", "moving", {"n": 1}, idempotency_key="moving-1")
    p = keys.partition_of(task_id, PARTITIONS)
    slot = slot_of(p)
    home = cluster.owner(slot)
    away = next(port for port in cluster.masters_now() if port != home)
    runs: list[str] = []
    finisher = threading.Timer(1.0, cluster.finish_slot, (slot, away))

    def moving(data: Any, db_manager: Any) -> bool:
        runs.append(task_id)
        if len(runs) == 1:  # the keys move now; the slot is reassigned in a second
            cluster.migrate_slot(slot, away, finish=False)
            finisher.start()
        return True

    registry.register("moving", moving)
    # the entry is claimed again 2 s after its delivery if its outcome was dropped
    worker = qm.worker(claim_idle_ms=2000, reclaim_every_ms=50)
    try:
        with contextlib.suppress(Unavailable):  # ``Worker.run`` would log it, go on
            worker.step()
        assert runs == [task_id] and finisher.ident is not None
        finisher.join()
        worker.run_until_idle(timeout=10)
        assert runs == [task_id]
        status = qm.get_task_status(task_id)
        assert status is not None and (status["status"], status["attempts"]) == ("completed", 1)
    finally:
        finisher.cancel()
        if finisher.ident is not None:
            finisher.join()
        restore(cluster, slot, home, away)
        qm.close()
