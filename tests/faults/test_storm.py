"""The storm: mixed credit traffic (purchases, uses, adjustments, credit holds
captured, released or left to expire, tasks that wait for earlier ones, and a
recurring schedule) from several producer processes while a chaos
loop SIGKILLs and restarts workers, projectors, the scheduler and the API, and
crashes Redis: once, on one redis-server (AOF, appendfsync always), kill -9 and
start again; on a Redis Cluster (three masters with a replica each, AOF
appendfsync always), kill -9 one master, let its replica take over and start the
killed node again a few seconds later (it rejoins as a replica). On the Cluster
every append waits for one replica (``LEDGER_WAIT_REPLICAS=1``), so the failover
may lose no acknowledged append: the checks are the same, as strict.

Afterwards, drained deterministically, every invariant is checked: every
acknowledged append is in the log and nothing unacknowledged is; Redis, the read
models and a pure re-fold of the log agree; no balance ever went below zero; every
task took effect exactly once or sits in the dead letters with its error; the
audit (library and ``ledger audit``) is clean.

The chaos kills the API only while it serves (a streak of kills during its
start-up would only hold the HTTP producers up). The Cluster's URL names one
node, the first; if the chaos kills that master, a process started while it is
down cannot connect (no other seed) and exits, and is started again until the
node is back (a replica then).

``LEDGER_SOAK_SECONDS`` lengthens the traffic (default 20 s) for a soak run (Redis
is then crashed once a minute). After a failed run, ``logs/chaos.log`` tells what
was killed when, and the producers' ``slow`` records what held an operation up.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo.database import Database

from api.dev.cluster import RedisClusterNodes
from api.dev.deployment import Deployment
from api.dev.embedded import EmbeddedMongo, free_port
from ledger.accounts import fold
from ledger.scores import credit_score
from ledger.tasks import allowed_collections
from projections.audit import audit
from projections.runner import all_projections, projector
from projections.store import MongoDBManager, connect
from streams import (
    HandlerRegistry,
    QueueManager,
    RetryPolicy,
    Scheduler,
    StreamsConfig,
    keys,
    schedules,
)
from streams.codec import event_id
from streams.connection import connect as connect_redis
from streams.registry import EVENT_COLLECTIONS, EVENT_TASK_TYPES
from streams.replies import entries as stream_entries
from streams.replies import text
from tests.conftest import MakeRedisServer
from tests.helpers import eventually
from tests.streamlog import account_histories

from . import handlers
from .cluster import ROOT, ClusterRedis, Fleet, SingleRedis, StormRedis, read_records
from .conftest import CLUSTER_PARTITIONS, PARTITIONS

SECONDS = float(os.environ.get("LEDGER_SOAK_SECONDS", "20"))
REDIS_KILLS = max(1, int(SECONDS // 60))
"""Redis is crashed once in the default run, once a minute in a soak."""
DRAIN_S = 120 + 4 * SECONDS
"""What is left after the storm drains at the Mongo-wire server's pace (~1k
writes/s; the counting recorders write one document per event): a longer
soak leaves more."""
NODE_TIMEOUT_MS = 3000
"""The Cluster's node timeout: a failover takes about this plus an election. Not
shorter: on a loaded machine a slow node must not be taken for a failed one."""
SEED = int(os.environ.get("LEDGER_STORM_SEED", "20261128"))
PRODUCERS = ("http", "http", "client", "client")
SCHEDULE = "storm-tick"
SCHEDULE_CRON = "*/2 * * * * *"
"""A recurring task every 2 s, fired by the schedulers the chaos kills."""
SCHEDULE_BORN = "storm:schedule-born"
"""When the test created the schedule (ms: its first tick is the first after) and
when the storm stopped the schedulers (stopped)."""
USERS = [f"storm-{i:02d}" for i in range(10)]


@pytest.fixture(params=["single", pytest.param("cluster", marks=pytest.mark.cluster)])
def storm_redis(
    request: pytest.FixtureRequest, tmp_path: Path, fresh_redis_server: MakeRedisServer
) -> Iterator[StormRedis]:
    """The Redis the storm runs on: one redis-server, or a 3-master Cluster with one
    replica each; every node it started is stopped afterwards, pass or fail."""
    if request.param == "single":
        yield SingleRedis(fresh_redis_server(appendfsync="always"), PARTITIONS)
        return
    nodes = RedisClusterNodes(
        tmp_path / "redis-cluster",
        masters=3,
        replicas=1,
        node_timeout_ms=NODE_TIMEOUT_MS,
        appendonly=True,
        appendfsync="always",
    )
    try:
        nodes.start()
        yield ClusterRedis(nodes, CLUSTER_PARTITIONS)
    finally:
        nodes.stop()


def drain(qm: QueueManager, db: Database[Any], partitions: int) -> None:
    """Move every delayed task, run every task and projection until nothing is left."""
    scheduler = Scheduler(qm.redis, partitions)

    def all_moved() -> bool:
        if not scheduler.pending():
            return True
        scheduler.tick()
        return False

    worker = qm.worker(
        claim_idle_ms=100,
        reclaim_every_ms=50,
        retry=RetryPolicy(max_attempts=6, base_ms=50, max_ms=200),
    )
    while True:  # a delayed task released by its parents is scheduled only then
        eventually(all_moved, message="delayed tasks never came due")
        worker.run_until_idle(timeout=DRAIN_S)
        if not scheduler.pending():
            break
    for projection in all_projections():
        projector(
            qm.redis, partitions, db, projection, claim_idle_ms=100, reclaim_every_ms=50
        ).run_until_idle(timeout=DRAIN_S)


def storm(
    tmp_path: Path, store: StormRedis, mongo: EmbeddedMongo, db_name: str
) -> tuple[list[dict[str, Any]], Fleet]:
    """Run the traffic and the chaos; returns the producers' records and the fleet
    (``store`` counts its own crashes)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {
        "REDIS_URL": store.url,
        "MONGO_URL": mongo.url,
        "MONGO_DB": db_name,
        "LEDGER_PARTITIONS": str(store.partitions),
        "LEDGER_API_KEYS": "",
    }
    if store.wait_replicas:
        env["LEDGER_WAIT_REPLICAS"] = str(store.wait_replicas)
    scheduling = QueueManager(
        config=StreamsConfig(redis_url=store.url, partitions=store.partitions),
        client=connect_redis(store.url),
    )
    scheduling.redis.hset(SCHEDULE_BORN, "ms", int(time.time() * 1000))  # before its 1st tick
    scheduling.add_schedule(
        SCHEDULE, SCHEDULE_CRON, "default", "fault_task", {"ref": SCHEDULE, "fail": False}
    )
    fleet = Fleet(logs, env, free_port())
    fleet.start_all()
    outs = [tmp_path / f"producer-{i}.jsonl" for i in range(len(PRODUCERS))]
    producing = Deployment(env=env, log_dir=logs, cwd=ROOT)
    try:
        fleet.wait_api()
        for i, mode in enumerate(PRODUCERS):
            spec = {
                "name": f"p{i}",
                "mode": mode,
                "seed": SEED + i,
                "out": str(outs[i]),
                "users": USERS,
                "seconds": SECONDS,
                "redis_url": store.url,
                "partitions": store.partitions,
                "wait_replicas": store.wait_replicas,
                "api_url": fleet.api_url,
            }
            producing.start(f"producer-{i}", json.dumps(spec), module="tests.faults.producer")
        producers = list(producing.procs.values())
        rng = random.Random(SEED)
        start = time.monotonic()
        kill_times = [
            start + SECONDS * (i + rng.uniform(0.3, 0.6)) / REDIS_KILLS for i in range(REDIS_KILLS)
        ]
        with open(logs / "chaos.log", "a", buffering=1) as chaos:  # what happened when

            def note(what: str) -> None:
                chaos.write(f"{time.time():.3f} {what}\n")

            while any(p.poll() is None for p in producers):
                time.sleep(rng.uniform(0.3, 0.9))  # the storm's pace: random time between faults
                if store.heal():
                    note(f"healed: {store.notes[-1]}")
                if store.kills < REDIS_KILLS and time.monotonic() >= kill_times[store.kills]:
                    note("crash Redis")
                    store.crash(rng)
                    note("crashed")
                else:
                    name = rng.choice(sorted(fleet.commands))
                    if name == "api" and not fleet.serving(timeout=1):
                        # killed again before it serves, it would only hold the HTTP
                        # producers up (past their patience, in a long streak)
                        name = rng.choice(sorted(set(fleet.commands) - {"api"}))
                    fleet.kill(name)
                    note(f"kill {name}")
                if revived := fleet.revive():
                    note(f"revive {' '.join(revived)}")
            if store.heal(now=True):
                note(f"healed: {store.notes[-1]}")
        for p in producers:
            assert p.wait(timeout=120) == 0, "a producer crashed (see its log)"
    finally:
        for name in producing.procs:
            producing.kill(name)
        producing.close()
        fleet.stop_all()
        scheduling.redis.hset(SCHEDULE_BORN, "stopped", int(time.time() * 1000))
        scheduling.close()
    return read_records(outs), fleet


@pytest.mark.timeout(SECONDS + 4 * DRAIN_S + 360)
def test_storm_of_kills_loses_nothing_and_doubles_nothing(
    tmp_path: Path,
    storm_redis: StormRedis,
    private_mongo: EmbeddedMongo,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, partitions = storm_redis, storm_redis.partitions
    if isinstance(store, ClusterRedis):  # the storm crosses nodes: every master has work
        by_master = store.partitions_by_master()
        print(f"\npartitions by master: {by_master}")
        assert all(by_master.values()), f"a master holds no partition: {by_master}"
    db_name = "storm"
    began = time.monotonic()
    records, fleet = storm(tmp_path, store, private_mongo, db_name)
    stormed = time.monotonic() - began

    monkeypatch.setenv("REDIS_URL", store.url)  # for handlers.fault_task
    client = connect_redis(store.url)
    mongo = connect(private_mongo.url)
    db = mongo[db_name]
    registry = HandlerRegistry()
    for task_type, handler in handlers.HANDLERS.items():
        registry.register(task_type, handler)
    qm = QueueManager(
        config=StreamsConfig(redis_url=store.url, partitions=partitions),
        client=client,
        registry=registry,
        db=MongoDBManager(db, allowed_collections(())),
    )
    try:
        drain(qm, db, partitions)
        drained = time.monotonic() - began - stormed
        problems = check(qm, db, records, partitions)
        report = audit(client, partitions, db)
        problems += [f"audit: {m}" for m in report.mismatches]
        problems += [f"audit lagging after the drain: {m}" for m in report.lagging]
        cli = subprocess.run(
            [sys.executable, "-m", "api", "audit", "--log-level", "WARNING"],
            cwd=ROOT,
            env={
                **os.environ,
                "REDIS_URL": store.url,
                "MONGO_URL": private_mongo.url,
                "MONGO_DB": db_name,
                "LEDGER_PARTITIONS": str(partitions),
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
        if cli.returncode != 0:
            problems.append(
                f"ledger audit exited {cli.returncode}: {cli.stdout[-2000:]}{cli.stderr[-2000:]}"
            )
        acked = {r["event_id"] for r in records if r["t"] == "ack"}
        kinds = Counter(
            e.kind for evs in account_histories(client, partitions).values() for e in evs
        )
        faults = sum(fleet.kills.values()) + store.kills
        answered = [r["at"] for r in records if r["t"] == "ack"]
        down = sum(any(a <= t <= b for a, b in store.outages) for t in answered)
        print(
            f"\nstorm ({store.kind}, {partitions} partitions): {len(acked)} events acknowledged "
            f"({down} while Redis was down or degraded), "
            f"{faults} faults injected ({dict(fleet.kills)}, Redis x{store.kills}: "
            f"{'; '.join(store.notes)}), "
            f"{sum(r['t'] == 'task' for r in records)} tasks "
            f"({sum(bool(r.get('parents')) for r in records if r['t'] == 'task')} waiting for "
            "others), "
            f"{sum(r['t'] == 'refused' for r in records)} refusals, holds: "
            f"{kinds['credits_held']} held, {kinds['hold_captured']} captured, "
            f"{kinds['hold_released']} released, {kinds['hold_expired']} expired; "
            f"{len(problems)} mismatches; storm {stormed:.0f}s, drain {drained:.0f}s"
        )
        assert not problems, "\n".join(problems[:50])
        assert store.kills == REDIS_KILLS and sum(fleet.kills.values()) >= 5, "too few faults"
        # the traffic exercised what the invariants are about
        assert len(acked) > 200, "too little traffic to mean anything"
        assert any(r["t"] == "refused" and r["code"] == "insufficient_credits" for r in records), (
            "no overdraft was attempted"
        )
        assert any(r["t"] == "dup" for r in records), "no key was repeated"
        assert kinds["credits_held"] and kinds["hold_captured"] and kinds["hold_expired"], kinds
        assert any(r["t"] == "task" and r["fail"] for r in records), "no failing task"
        assert any(r["t"] == "task" and r["style"] == "original" for r in records)
    finally:
        qm.close()
        mongo.close()


def check_schedule(qm: QueueManager, db: Database[Any], dead: set[str]) -> list[str]:
    """The recurring schedule fired while schedulers were being SIGKILLed. Every
    tick from its creation until the schedulers were stopped either fired once —
    its task (id derived from the tick) completed with one effect, whose ``_id``
    is the task id, or is dead with its error — or was missed while no scheduler
    ran and coalesced into the next: a few, not most."""
    if not qm.remove_schedule(SCHEDULE):
        return ["the storm's schedule is gone"]
    born, stopped = (int(v or 0) for v in qm.redis.hmget(SCHEDULE_BORN, "ms", "stopped"))
    ticks, at = [], born
    while (at := schedules.next_tick(SCHEDULE_CRON, "UTC", at)) <= stopped:
        ticks.append(at)
    ids = {schedules.task_id(SCHEDULE, t): t for t in ticks}
    fired = {tid: (qm.get_task_status(tid) or {}).get("status") for tid in ids}
    fired = {tid: status for tid, status in fired.items() if status}
    problems = [
        f"schedule tick {ids[tid]} ended {status!r}"
        for tid, status in fired.items()
        if status != "completed" and tid not in dead
    ]
    effects = Counter(d["_id"] for d in db[handlers.COLLECTION].find({"ref": SCHEDULE}, {"_id": 1}))
    problems += [f"an effect of no fired tick: {e}" for e in effects if e not in fired]
    problems += [
        f"schedule tick {ids[tid]} completed with {effects[tid]} effects"
        for tid, status in fired.items()
        if status == "completed" and effects[tid] != 1
    ]
    print(f"\nschedule: {len(fired)} of {len(ticks)} ticks fired")
    if len(fired) < len(ticks) / 2:
        problems.append(f"only {len(fired)} of the schedule's {len(ticks)} ticks fired")
    return problems


def check(
    qm: QueueManager, db: Database[Any], records: list[dict[str, Any]], partitions: int
) -> list[str]:
    problems: list[str] = []
    problems += [f"producer: {r}" for r in records if r["t"] in ("bad", "gave_up")]
    acks = [r for r in records if r["t"] == "ack"]
    histories = account_histories(qm.redis, partitions)
    logged = {event_id(e.user_id, e.version): e for evs in histories.values() for e in evs}

    # every acknowledged append is in the log, as it was acknowledged
    seen: dict[str, tuple[int, int]] = {}
    for r in acks:
        e = logged.get(r["event_id"])
        if e is None:
            problems.append(f"acknowledged but not in the log: {r}")
        elif (e.version, e.after.balance) != (r["version"], r["balance"]):
            problems.append(f"log differs from the acknowledgement: {r} vs {e}")
        if seen.setdefault(r["event_id"], (r["version"], r["balance"])) != (
            r["version"],
            r["balance"],
        ):
            problems.append(f"one event acknowledged two ways: {r}")
    # nothing unacknowledged is in the log (every operation was retried until answered)
    acked_ids = {r["event_id"] for r in acks}
    problems += [  # (but an expiry, which the schedulers append, no producer)
        f"in the log but never acknowledged: {eid}"
        for eid in sorted(set(logged) - acked_ids)
        if logged[eid].kind != "hold_expired"
    ]
    # every hold closed at most once; an expired one was open until its expiry
    closed = Counter(
        getattr(e, "hold_id", None)
        for e in logged.values()
        if e.kind in ("hold_captured", "hold_released", "hold_expired")
    )
    problems += [f"hold closed {n} times: {h}" for h, n in closed.items() if n > 1]
    # a repeated key answers the first event
    problems += [
        f"duplicate key made a new event: {r}"
        for r in records
        if r["t"] == "dup" and r["again"] != r["first"]
    ]
    # no balance ever below zero; Redis, the views and the re-fold agree
    problems += [
        f"negative balance: {eid} {e.after}"
        for eid, e in logged.items()
        if e.after.balance < 0 or e.after.used < 0
    ]
    for user, events in histories.items():
        account = fold(events)
        assert account is not None
        want = (account.version, account.totals.balance)
        state = qm.balance(user)
        if state is None or (state["version"], state["balance"]) != want:
            problems.append(f"{user}: redis state {state} != fold {want}")
        doc = db.balances.find_one({"_id": user})
        if doc is None or (
            doc["version"],
            doc["balance"],
            doc["purchased_total"],
            doc["used_total"],
        ) != (*want, account.totals.purchased, account.totals.used):
            problems.append(f"{user}: balances view {doc} != fold {account}")
        score = db.credit_scores.find_one({"_id": user})
        if score is None or (score["version"], score["score"]) != (
            account.version,
            credit_score(account.totals, account.version),
        ):
            problems.append(f"{user}: credit_scores view {score} != fold {account}")
    if db.events.count_documents({}) != len(logged):
        problems.append(
            f"archive holds {db.events.count_documents({})} events, the log {len(logged)}"
        )
    # every event recorded once in its original collection by the workers
    runs = Counter({text(k): int(v) for k, v in qm.redis.hgetall(handlers.RUNS).items()})
    dead_events = {}
    for d in qm.dead_letters(limit=100_000):
        if d.kind != "task":
            fields = stream_entries(qm.redis, d.stream, min=d.original_id, max=d.original_id)
            dead_events[event_id(d.user_id or "", int(fields[0][1][b"v"]))] = d
    recorded: set[str] = set()
    for collection in EVENT_COLLECTIONS.values():
        recorded |= {str(d["_id"]) for d in db[collection].find({}, {"_id": 1})}
    # (or, like a task, dead in the workers group with its error: the begin counter
    # counts every delivery a SIGKILL interrupted, so a holder killed again and again
    # legitimately gives up; the read models never depend on it, the audit checks them)
    problems += [
        f"event never recorded by a worker: {eid} (runs {runs[eid]})"
        for eid in sorted(set(logged) - recorded - set(dead_events))
    ]
    problems += [
        f"a ledger event dead-lettered by {d.group} or without its error: {d}"
        for d in dead_events.values()
        if d.group != "workers" or not d.error
    ]
    problems += [f"recorded but not an event: {x}" for x in sorted(recorded - set(logged))]
    for e in logged.values():
        assert EVENT_TASK_TYPES[e.kind] in EVENT_COLLECTIONS
    # tasks: exactly once, or dead with their error
    dead = {d.task_id: d for d in qm.dead_letters(limit=100_000)}
    effects = {
        c: Counter(d.get("ref") for d in db[c].find({}, {"ref": 1}))
        for c in (handlers.COLLECTION, "notifications")
    }  # one read, not one per task
    tasks = [r for r in records if r["t"] == "task"]
    cancelled = set()
    for r in tasks:  # a task after a dead (or cancelled) parent is cancelled, never run
        if any(p in dead or p in cancelled for p in r.get("parents", [])):
            cancelled.add(r["task_id"])
    for r in tasks:
        status = (qm.get_task_status(r["task_id"]) or {}).get("status")
        collection = handlers.COLLECTION if r["style"] == "custom" else "notifications"
        docs = effects[collection][r["ref"]]
        letter = dead.get(r["task_id"])
        if docs > 1:
            problems.append(f"task ran its effect {docs} times: {r}")
        if r["task_id"] in cancelled:
            if status != "cancelled" or docs or runs[r["ref"]] or letter is not None:
                problems.append(
                    f"a task after a dead parent is {status!r} (ran {runs[r['ref']]} times): {r}"
                )
            continue
        if status == "cancelled":
            problems.append(f"cancelled although every parent completed: {r}")
        if letter is not None:  # dead: with its error, and a failing task did nothing
            # (not its status hash: a stale settle may still say "retrying" - reported)
            if not letter.error:
                problems.append(f"dead letter without its error: {r} {letter}")
            if r["fail"] and docs:
                problems.append(f"a failing task left a document: {r}")
        elif status == "completed":
            if docs != 1 or r["fail"]:
                problems.append(f"completed task with {docs} documents: {r}")
        else:
            problems.append(f"task left {status!r} after the drain and not dead: {r}")
        if r["fail"] and letter is None:
            problems.append(f"a task that always fails is not dead: {r} ({status!r})")
    custom = [r for r in records if r["t"] == "task" and r["style"] == "custom"]
    problems += check_schedule(qm, db, {t for t in dead if t})
    # a task that is not dead ran; a dead one may not have (kills burn its attempts).
    # Its document shows it ran too: a Cluster failover may lose the last counts.
    problems += [
        f"task never ran: {r} {qm.get_task_status(r['task_id'])}"
        for r in custom
        if runs[r["ref"]] == 0
        and not effects[handlers.COLLECTION][r["ref"]]
        and r["task_id"] not in dead
        and r["task_id"] not in cancelled
    ]
    assert any(r.get("parents") for r in tasks), "no task waited for another"
    for p in keys.partitions(partitions):
        for lv in keys.LEVELS_DESC:
            for group in ("workers", *(f"proj:{pr.name}" for pr in all_projections())):
                pending = qm.redis.xpending(keys.stream(p, lv), group)["pending"]
                if pending:
                    problems.append(f"{pending} entries still pending in {group} p{p}")
    return problems
