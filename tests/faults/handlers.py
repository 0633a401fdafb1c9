"""Task handlers for the fault tests, imported by real worker processes
(``ledger worker --import tests.faults.handlers``) and by the in-process drain.

``fault_task`` counts every run in the Redis hash ``faults:runs`` (so a test can
see redeliveries), fails on purpose when ``data["fail"]`` is set (so the task
must end in the dead letters), and otherwise inserts one document through
``db_manager`` (idempotent per task: its ``_id`` derives from the task id).
``REDIS_URL`` may name one redis-server or a Redis Cluster; on a Cluster no
replica confirms a count, so a failover may lose the last ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams import default_registry
from streams.handlers import DBManager
from streams.registry import EVENT_COLLECTIONS, EventRecorder
from tests.handler_redis import handler_redis

RUNS = "faults:runs"
COLLECTION = "analytics"


def fault_task(data: Mapping[str, Any], db_manager: DBManager) -> bool:
    handler_redis().hincrby(RUNS, str(data["ref"]), 1)
    if data.get("fail"):
        raise RuntimeError(f"planned failure of {data['ref']}")
    db_manager.insert(COLLECTION, {"ref": data["ref"]})
    return True


class CountingRecorder:
    """The built-in ``EventRecorder`` for a ledger event, counting its runs like tasks'."""

    def __init__(self, task_type: str) -> None:
        self.inner = EventRecorder(EVENT_COLLECTIONS[task_type])

    def __call__(self, data: Mapping[str, Any], db_manager: DBManager) -> bool:
        handler_redis().hincrby(RUNS, str(data["event_id"]), 1)
        return self.inner(data, db_manager)


HANDLERS: dict[str, Any] = {
    "fault_task": fault_task,
    **{t: CountingRecorder(t) for t in EVENT_COLLECTIONS},
}

for _task_type, _handler in HANDLERS.items():
    default_registry.register(_task_type, _handler)
