"""A task handler for the cluster tests, imported by real worker processes
(``ledger worker --import tests.cluster.handlers``) and usable in-process.

``cluster_task`` records every run in the Redis hash ``RUNS`` under
``"<ref>|<pid>"`` (so a test sees which process ran a task, and how often),
waits ``data["sleep"]`` seconds (so a worker can be killed mid-handler), then
inserts one ``analytics`` document through ``db_manager`` (``_id`` = the task
id: a redelivery inserts nothing twice). ``REDIS_URL`` may be a
``redis+cluster://`` URL: the hash lives in one slot like any other key.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from streams import default_registry
from streams.connection import RedisClient
from streams.handlers import DBManager
from streams.replies import text
from tests.handler_redis import handler_redis

RUNS = "cluster-test:runs"
COLLECTION = "analytics"
TASK_TYPE = "cluster_task"


def cluster_task(data: Mapping[str, Any], db_manager: DBManager) -> bool:
    handler_redis().hincrby(RUNS, f"{data['ref']}|{os.getpid()}", 1)
    time.sleep(float(data.get("sleep", 0)))
    db_manager.insert(COLLECTION, {"ref": data["ref"]})
    return True


def runs(client: RedisClient) -> dict[str, Counter[int]]:
    """{ref: Counter({pid: runs in that process})} from ``RUNS``."""
    out: dict[str, Counter[int]] = {}
    for field, count in client.hgetall(RUNS).items():
        ref, pid = text(field).rsplit("|", 1)
        out.setdefault(ref, Counter())[int(pid)] += int(count)
    return out


default_registry.register(TASK_TYPE, cluster_task)
