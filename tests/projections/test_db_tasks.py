"""Tasks of the default DB handler on real servers: a redelivery reaches one document,
and a producer cannot forge or change the ledger events the workers record."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymongo.database import Database

from ledger.errors import ValidationError
from ledger.tasks import DEFAULT_COLLECTIONS, EVENT_RECORD_COLLECTIONS
from projections.store import MongoDBManager
from streams import HandlerRegistry, QueueManager, RetryPolicy, StreamsConfig
from streams.connection import RedisClient, connect
from streams.registry import EVENT_COLLECTIONS, DefaultDBHandler

from .conftest import PARTITIONS

MakeQm = Callable[[HandlerRegistry], QueueManager]


@pytest.fixture
def make_qm(redis: RedisClient, redis_url: str, mongo_db: Database[Any]) -> Iterator[MakeQm]:
    """QueueManagers with a database, each with the handler registry it is given."""
    made: list[QueueManager] = []

    def make(registry: HandlerRegistry) -> QueueManager:
        qm = QueueManager(
            config=StreamsConfig(redis_url=redis_url, partitions=PARTITIONS),
            client=connect(redis_url),
            db=MongoDBManager(mongo_db, DEFAULT_COLLECTIONS),
            registry=registry,
        )
        made.append(qm)
        return qm

    try:
        yield make
    finally:
        for qm in made:
            qm.close()


def db_task(operation: str, collection: str, **rest: Any) -> dict[str, Any]:
    return {"operation": operation, "collection": collection, **rest}


def test_the_protected_collections_are_where_events_are_recorded() -> None:
    assert set(EVENT_COLLECTIONS.values()) == EVENT_RECORD_COLLECTIONS


def test_a_redelivered_update_or_delete_task_reaches_one_document(mongo_db: Database[Any]) -> None:
    mongo_db.notifications.insert_many([{"_id": f"n{i}", "state": "new"} for i in range(3)])
    manager = MongoDBManager(mongo_db, DEFAULT_COLLECTIONS)
    handler = DefaultDBHandler(DEFAULT_COLLECTIONS)
    update = db_task("update", "notifications", filter={"state": "new"}, data={"state": "sent"})
    delete = db_task("delete", "notifications", filter={"state": "new"})
    for _ in range(2):  # delivered, then delivered again with the same task id
        assert handler(update, manager.for_event("task-u")) is True
        assert handler(delete, manager.for_event("task-d")) is True
    assert list(mongo_db.notifications.find({}, sort=[("_id", 1)])) == [
        {"_id": "n0", "state": "sent"},
        {"_id": "n2", "state": "new"},
    ]


def test_a_forged_event_record_is_refused_at_enqueue(make_qm: MakeQm) -> None:
    qm = make_qm(HandlerRegistry())
    for data, field in [
        (
            db_task("insert", "users", data={"_id": "bob:1", "email": "forged"}),
            "task_data.data._id",
        ),
        (
            db_task("update", "credit_purchases", filter={"_id": "bob:2"}, data={"amount": 9}),
            "task_data.filter._id",
        ),
        (db_task("delete", "credit_usage", filter={"_id": "bob:3"}), "task_data.filter._id"),
    ]:
        with pytest.raises(ValidationError) as info:
            qm.enqueue("default", "db_op", data)
        assert info.value.field == field
    assert qm.get_queue_stats()["default"]["length"] == 0


def test_a_forged_record_that_reaches_a_worker_is_dead_lettered(
    make_qm: MakeQm, mongo_db: Database[Any]
) -> None:
    """A producer whose process had a handler for the task type skipped the DB-task
    check; the worker, which has none, runs the default DB handler and refuses."""
    registry = HandlerRegistry()
    registry.register("db_op", lambda data, db: True)
    producer = make_qm(registry)
    producer.enqueue(
        "default", "db_op", db_task("insert", "users", data={"_id": "bob:1", "email": "forged"})
    )
    worker_side = make_qm(HandlerRegistry())
    once = RetryPolicy(max_attempts=1, base_ms=1, max_ms=5)
    worker_side.worker(retry=once).run_until_idle()
    worker_side.register_user("bob", "bob@example.com")
    worker_side.purchase("bob", 40, "pay-1")
    worker_side.worker(retry=once).run_until_idle()  # the recorder stores both events
    producer.enqueue(
        "default",
        "db_op",
        db_task("update", "credit_purchases", filter={"user_id": "bob"}, data={"amount": 9}),
    )
    producer.enqueue(
        "default", "db_op", db_task("delete", "users", filter={"email": "bob@example.com"})
    )
    worker_side.worker(retry=once).run_until_idle()
    errors = [d.error for d in worker_side.dead_letters()]
    assert len(errors) == 3
    assert sum("ledger event id" in e and "'bob:1'" in e for e in errors) == 1
    assert sum("matches only ledger events recorded in" in e for e in errors) == 2
    user = mongo_db.users.find_one({"_id": "bob:1"})
    assert user is not None and user["email"] == "bob@example.com"
    purchase = mongo_db.credit_purchases.find_one({"_id": "bob:2"})
    assert purchase is not None and purchase["amount"] == 40
