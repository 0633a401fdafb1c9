"""`ledger project` SIGKILLed again and again under live traffic: the views still
equal the fold of the log, every event archived once."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis as redis_py
from pymongo.database import Database

from ledger.errors import InsufficientCredits
from projections.runner import all_projections, projector
from streams import QueueManager, StreamsConfig

from .conftest import PARTITIONS
from .test_runner import assert_views_match_the_log

ROOT = Path(__file__).resolve().parents[2]


def test_projector_killed_repeatedly_loses_and_doubles_nothing(
        qm: QueueManager, redis_url: str, mongo_url: str,
        mongo_db: Database[Any]) -> None:
    users = [f"k{i}" for i in range(8)]
    for u in users:
        qm.register_user(u, f"{u}@example.com")
    stop = threading.Event()
    appended = [0]

    def produce() -> None:
        qm = QueueManager(config=StreamsConfig(redis_url=redis_url, partitions=PARTITIONS),
                          client=redis_py.Redis.from_url(redis_url))
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
                time.sleep(0.004)
        finally:
            qm.close()

    env = {**os.environ, "REDIS_URL": redis_url, "MONGO_URL": mongo_url,
           "MONGO_DB": mongo_db.name, "LEDGER_PARTITIONS": str(PARTITIONS)}
    cmd = [sys.executable, "-m", "api", "project", "--batch", "20", "--claim-idle-ms", "300",
           "--log-level", "WARNING"]
    producer = threading.Thread(target=produce)
    producer.start()
    rng = random.Random(9)
    kills = 0
    try:
        for _ in range(4):
            proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
            time.sleep(rng.uniform(0.6, 1.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
    finally:
        stop.set()
        producer.join()
    assert kills == 4 and appended[0] > 100
    assert mongo_db.events.count_documents({}) > 0, "the killed projectors made progress"
    for projection in all_projections():
        projector(qm.redis, PARTITIONS, mongo_db, projection,
                  claim_idle_ms=300).run_until_idle(timeout=60)
    assert_views_match_the_log(qm, mongo_db)
