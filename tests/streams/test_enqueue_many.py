"""enqueue_many: one round trip, each task queued as by enqueue, all or nothing on bad input."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from ledger.errors import ValidationError
from ledger.tasks import PayloadTooLarge, Priority
from streams import HandlerRegistry, QueueManager, Worker

from .test_enqueue import nothing_written


def test_tasks_are_queued_in_order_and_each_runs_once(
    qm: QueueManager, registry: HandlerRegistry, make_worker: Callable[..., Worker]
) -> None:
    seen: list[int] = []

    def handler(data: Mapping[str, Any], db_manager: Any) -> bool:
        seen.append(int(data["i"]))
        return True

    registry.register("count", handler)
    ids = qm.enqueue_many(
        "default", "count", [{"i": i} for i in range(300)], priority=Priority.HIGH
    )
    assert len(ids) == len(set(ids)) == 300
    assert qm.get_task_status(ids[0])["status"] == "queued"  # type: ignore[index]
    make_worker().run_until_idle(timeout=30)
    assert sorted(seen) == list(range(300))
    assert {qm.get_task_status(t)["status"] for t in ids} == {"completed"}  # type: ignore[index]


def test_delayed_tasks_are_scheduled(qm: QueueManager) -> None:
    ids = qm.enqueue_many("default", "job", [{"a": 1}, {"a": 2}], delay=60)
    assert {qm.get_task_status(t)["status"] for t in ids} == {"scheduled"}  # type: ignore[index]


def test_an_empty_list_queues_nothing(qm: QueueManager) -> None:
    assert qm.enqueue_many("default", "job", []) == []


@pytest.mark.parametrize(
    "tasks_data, field",
    [
        ({"a": 1}, "tasks_data"),
        ("abc", "tasks_data"),
        (None, "tasks_data"),
        ([{"a": 1}, {"$where": "sleep(1)"}], "tasks_data[1].$where"),
        ([{"a": 1}, ["x"]], "tasks_data[1]"),
        ([{"a": 1}, {"b": math.nan}], "tasks_data[1].b"),
        ([{"a": 1}] * 5 + [{"blob": "x" * (70 * 1024)}], "tasks_data[5]"),
        (
            [{"operation": "insert", "collection": "balances", "data": {}}],
            "tasks_data[0].collection",
        ),
    ],
)
def test_one_bad_item_queues_nothing_and_is_named(
    qm: QueueManager, tasks_data: Any, field: str
) -> None:
    with pytest.raises(ValidationError) as err:
        qm.enqueue_many("default", "db", tasks_data)
    assert err.value.field == field
    assert "tasks_data" in str(err.value)
    assert nothing_written(qm)


def test_an_oversized_item_is_payload_too_large(qm: QueueManager) -> None:
    with pytest.raises(PayloadTooLarge):
        qm.enqueue_many("default", "job", [{"blob": "x" * (70 * 1024)}])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(queue_name="nope"), "queue_name"),
        (dict(task_type="bad type!"), "task_type"),
        (dict(priority=9), "priority"),
        (dict(delay=-1), "delay"),
    ],
)
def test_bad_common_arguments_are_refused(
    qm: QueueManager, kwargs: dict[str, Any], field: str
) -> None:
    call: dict[str, Any] = dict(queue_name="default", task_type="job", tasks_data=[{"a": 1}])
    call.update(kwargs)
    with pytest.raises(ValidationError) as err:
        qm.enqueue_many(**call)
    assert err.value.field == field
    assert nothing_written(qm)
