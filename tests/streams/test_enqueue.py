"""Enqueue and the other public calls under hostile input: clear errors, nothing written."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ledger.errors import IdempotencyKeyReused, ValidationError
from streams import QueueManager, keys
from streams.errors import UnknownDeadLetter

from ..strategies import nest
from ..streamlog import keys_matching
from .conftest import PARTITIONS


def nothing_written(qm: QueueManager) -> bool:
    """Only the partition-count record may exist."""
    return keys_matching(qm.redis) <= {"ledger:meta"}


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(queue_name="nope"), "queue_name"),
        (dict(queue_name=None), "queue_name"),
        (dict(task_type="bad type!"), "task_type"),
        (dict(task_type=""), "task_type"),
        (dict(task_data=["not", "a", "dict"]), "task_data"),
        (dict(task_data={"$where": "sleep(1000)"}), "task_data.$where"),
        (dict(task_data={"a": {"b": [{"$gt": 1}]}}), None),
        (dict(task_data={"x": math.nan}), None),
        (dict(task_data={"x": 2**64}), None),
        (dict(task_data={"x": object()}), None),
        (dict(task_data=nest(40)), None),
        (dict(task_data={"blob": "x" * (70 * 1024)}), "task_data"),
        (dict(priority=0), "priority"),
        (dict(priority=5), "priority"),
        (dict(priority=True), "priority"),
        (dict(priority="HIGH"), "priority"),
        (dict(delay=-1), "delay"),
        (dict(delay=math.inf), "delay"),
        (dict(delay="soon"), "delay"),
        (dict(delay=10**9), "delay"),
        (
            dict(
                task_type="db",
                task_data={
                    "operation": "insert",
                    "collection": "balances",
                    "data": {"balance": 10**6},
                },
            ),
            "collection",
        ),
        (
            dict(
                task_type="db",
                task_data={"operation": "insert", "collection": "system.users", "data": {}},
            ),
            "collection",
        ),
        (dict(task_type="db", task_data={"operation": "drop", "collection": "users"}), "operation"),
        (
            dict(
                task_type="db",
                task_data={"operation": "delete", "collection": "users", "filter": {}},
            ),
            "filter",
        ),
        (
            dict(
                task_type="db",
                task_data={
                    "operation": "update",
                    "collection": "users",
                    "filter": {"_id": 1},
                    "data": {"$set": {"x": 1}},
                },
            ),
            None,
        ),
        (dict(idempotency_key="with space"), "Idempotency-Key"),
    ],
)
def test_hostile_enqueue_is_refused(
    qm: QueueManager, kwargs: dict[str, Any], field: str | None
) -> None:
    call: dict[str, Any] = dict(queue_name="default", task_type="job", task_data={"a": 1})
    call.update(kwargs)
    with pytest.raises(ValidationError) as err:
        qm.enqueue(**call)
    if field is not None:
        assert err.value.field is not None and err.value.field.endswith(field)
    assert err.value.message
    assert nothing_written(qm)


def test_idempotent_enqueue(qm: QueueManager) -> None:
    first = qm.enqueue("default", "job", {"a": 1}, idempotency_key="order-7")
    assert qm.enqueue("default", "job", {"a": 1}, idempotency_key="order-7") == first
    with pytest.raises(IdempotencyKeyReused):
        qm.enqueue("default", "job", {"a": 2}, idempotency_key="order-7")
    assert qm.get_queue_stats("default")["length"] == 1


@pytest.mark.parametrize(
    "task_id", ["", "nope", "x" * 10_000, keys.task(keys.partitions(PARTITIONS)[0], "*"), "*"]
)
def test_unknown_task_status_is_none(qm: QueueManager, task_id: str) -> None:
    qm.enqueue("default", "job", {"a": 1})
    assert qm.get_task_status(task_id) is None


@pytest.mark.parametrize(
    "dead_id", ["", "p0", "p0:abc", "p99:1-0", "p0:1-0", "../p0:1-0", "p0:1-0 OR 1"]
)
def test_requeue_of_unknown_dead_letters(qm: QueueManager, dead_id: str) -> None:
    with pytest.raises(UnknownDeadLetter):
        qm.requeue(dead_id)
    assert nothing_written(qm)


def test_other_calls_refuse_bad_arguments(qm: QueueManager) -> None:
    with pytest.raises(ValidationError):
        qm.get_queue_stats("no_such_queue")
    with pytest.raises(ValidationError):
        qm.register_handler("bad type!", lambda data, db: True)
    with pytest.raises(ValidationError):
        qm.register_handler("fine", "not callable")  # type: ignore[arg-type]
