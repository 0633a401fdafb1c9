"""`ledger project` SIGKILLed again and again under live traffic: the views still
equal the fold of the log, every event archived once."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from typing import Any

import pytest
import redis as redis_py
from pymongo.database import Database

from api.dev.deployment import Deployment
from ledger.errors import InsufficientCredits
from projections.runner import all_projections, projector
from streams import QueueManager, StreamsConfig

from .conftest import PARTITIONS
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
            client=redis_py.Redis.from_url(redis_url),
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
