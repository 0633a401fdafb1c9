"""A batch handler for tests that run real worker processes
(``ledger worker --import tests.streams.batch_handlers``).

``batch_insert`` records each call's size in the Redis list ``test:batches`` and
every item it ran in ``test:ran`` (so a test can count calls and redeliveries),
inserts one document per item through ``db_manager.for_item(i)`` (keyed by the
item's task id, so a test can check each effect happened exactly once), then
sleeps ``ms`` (the largest of its items'): a kill then lands after the effects,
before the round is settled. An item with ``"fail": true`` fails.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from streams import BatchDBManager, batch_handler
from tests.handler_redis import handler_redis


@batch_handler("batch_insert", max_batch=50)
def batch_insert(items: list[Mapping[str, Any]], db_manager: BatchDBManager) -> list[bool]:
    r = handler_redis()
    pipe = r.pipeline(transaction=False)
    pipe.rpush("test:batches", len(items))
    pipe.rpush("test:ran", *(item["i"] for item in items))
    pipe.execute()
    for i, item in enumerate(items):
        if not item.get("fail"):
            db_manager.for_item(i).insert("analytics", {"i": item["i"]})
    time.sleep(max(item.get("ms", 0) for item in items) / 1000)
    return [not item.get("fail") for item in items]
