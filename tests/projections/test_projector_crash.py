"""`ledger project` SIGKILLed again and again under live traffic: the views still
equal the fold of the log, every event archived once."""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from typing import Any

import pymongo
import pytest
import redis as redis_py
from pymongo.database import Database

from api.dev.deployment import Deployment
from ledger.errors import InsufficientCredits
from projections.runner import all_projections, projector
from streams import QueueManager, StreamsConfig, keys
from streams.connection import connect
from tests.helpers import eventually
from tests.streamlog import account_histories

from .conftest import PARTITIONS
from .test_races import assert_equals_a_replay
from .test_runner import assert_views_match_the_log

pytestmark = pytest.mark.slow  # a projector process SIGKILLed again and again


def test_projector_killed_repeatedly_loses_and_doubles_nothing(
    qm: QueueManager, redis_url: str, mongo_db: Database[Any], deployment: Deployment
) -> None:
    users = [f"k{i}" for i in range(8)]
    for u in users:
        qm.register_user(u, f"{u}@example.com")
    stop = threading.Event()
    appended = [0]

    def produce() -> None:
        qm = QueueManager(
            config=StreamsConfig(redis_url=redis_url, partitions=PARTITIONS),
            client=connect(redis_url),
        )
        rng = random.Random(5)
        try:
            while not stop.is_set() and appended[0] < 400:
                u = rng.choice(users)
                if rng.random() < 0.5:
                    qm.purchase(u, rng.randint(1, 100), f"tx-{appended[0]}")
                else:
                    with contextlib.suppress(InsufficientCredits):
                        qm.use(u, rng.randint(1, 80))
                appended[0] += 1
                time.sleep(0.004)  # paces the producer: traffic throughout the kills
        finally:
            qm.close()

    producer = threading.Thread(target=produce)
    producer.start()
    rng = random.Random(9)
    try:
        deployment.start("projector", "project", "--batch", "20", "--claim-idle-ms", "300")
        for i in range(4):
            time.sleep(rng.uniform(0.6, 1.2))  # the projector works a random while, then dies
            if i < 3:
                deployment.restart("projector")  # SIGKILL, then the same command again
            else:
                deployment.kill("projector")
    finally:
        deployment.stop()
        stop.set()
        producer.join()
    assert deployment.starts["projector"] == 4 and appended[0] > 100
    assert mongo_db.events.count_documents({}) > 0, "the killed projectors made progress"
    for projection in all_projections():
        projector(qm.redis, PARTITIONS, mongo_db, projection, claim_idle_ms=300).run_until_idle(
            timeout=60
        )
    assert_views_match_the_log(qm, mongo_db)


def test_a_sigkilled_projector_of_two_leaves_its_group_and_the_other_finishes(
    qm: QueueManager,
    redis_url: str,
    mongo_db: Database[Any],
    mongo_client: pymongo.MongoClient[Any],
    deployment: Deployment,
) -> None:
    """Two ``ledger project`` processes of one read model; one is SIGKILLed while it
    holds entries: the other takes them over, the dead consumer leaves the group,
    and the read model is what a replay of the log builds."""
    users = [f"d{i}" for i in range(8)]
    for u in users:
        qm.register_user(u, f"{u}@example.com")
    options = ("--only", "balances", "--batch", "4", "--claim-idle-ms", "300")
    procs = [
        deployment.start(f"projector-{i}", "project", *options, "--forget-idle-ms", "1000")
        for i in range(2)
    ]
    stop = threading.Event()

    def produce() -> None:
        qm = QueueManager(
            config=StreamsConfig(redis_url=redis_url, partitions=PARTITIONS),
            client=connect(redis_url),
        )
        rng = random.Random(21)
        try:
            for i in range(300):
                if stop.is_set():
                    break
                u = rng.choice(users)
                if rng.random() < 0.6:
                    qm.purchase(u, rng.randint(1, 100), f"dead-{i}")
                else:
                    with contextlib.suppress(InsufficientCredits):
                        qm.use(u, rng.randint(1, 80))
                time.sleep(0.003)
        finally:
            qm.close()

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        victim = procs[0]
        eventually(
            lambda: all(of_process(consumers(qm), proc.pid) for proc in procs),
            timeout=15,
            ignoring=(redis_py.ResponseError,),  # no group yet
            message="both projectors did not start consuming",
        )

        def frozen_holding() -> bool:
            """SIGSTOP the victim; keep it stopped once it holds entries."""
            deployment.signal("projector-0", signal.SIGSTOP)
            if held(qm, victim.pid):
                return True
            deployment.signal("projector-0", signal.SIGCONT)
            return False

        eventually(frozen_holding, timeout=15, interval=0.01, message="never caught holding")
        gone = of_process(consumers(qm), victim.pid)
        deployment.kill("projector-0")
        assert gone and held(qm, victim.pid) > 0
    except BaseException:
        stop.set()
        raise
    finally:
        producer.join()  # traffic goes on after the kill: the survivor has new work too

    last = {u: events[-1].version for u, events in account_histories(qm.redis, PARTITIONS).items()}

    def caught_up() -> bool:
        stored = {d["_id"]: d["version"] for d in mongo_db.balances.find()}
        assert stored == last and held(qm, victim.pid) == 0
        return True

    eventually(caught_up, timeout=30, message="the survivor did not take over")
    eventually(
        lambda: not consumers(qm) & gone,
        timeout=15,
        message=lambda: f"the dead projector stayed in its group: {sorted(consumers(qm))}",
    )
    assert procs[1].poll() is None and of_process(consumers(qm), procs[1].pid)
    assert_equals_a_replay(qm, mongo_db, mongo_client, "balances")


GROUP = "proj:balances"


def consumers(qm: QueueManager) -> set[str]:
    return {
        c["name"].decode()
        for p in keys.partitions(PARTITIONS)
        for lv in keys.LEVELS_DESC
        for c in qm.redis.xinfo_consumers(keys.stream(p, lv), GROUP)
    }


def of_process(names: set[str], pid: int) -> set[str]:
    return {name for name in names if name.split(":")[1] == str(pid)}  # host:pid:thread


def held(qm: QueueManager, pid: int) -> int:
    """Entries pending to the consumers of process ``pid``."""
    return sum(
        int(c["pending"])
        for p in keys.partitions(PARTITIONS)
        for lv in keys.LEVELS_DESC
        for c in qm.redis.xpending(keys.stream(p, lv), GROUP)["consumers"]
        if c["name"].decode().split(":")[1] == str(pid)
    )
