"""``depends_on`` on ``POST /api/queue/enqueue`` and ``DELETE /api/queue/tasks/{id}``."""

from __future__ import annotations

from typing import Any

import pytest
import redis as redis_py

from streams import HandlerRegistry, QueueManager, RetryPolicy
from tests.streamlog import keys_matching

from .conftest import MakeClient, auth

PRODUCER = auth("producer")
READER = auth("reader")
ADMIN = auth("admin")
BODY = {"queue_name": "default", "task_type": "t", "task_data": {"n": 1}}


@pytest.fixture
def api_registry() -> HandlerRegistry:
    registry = HandlerRegistry()
    registry.register("t", lambda data, db_manager: True)
    registry.register("boom", lambda data, db_manager: False)
    return registry


def enqueue(client: Any, **change: Any) -> Any:
    return client.post("/api/queue/enqueue", json={**BODY, **change}, headers=PRODUCER)


def status_of(client: Any, task_id: str) -> dict[str, Any]:
    r = client.get(f"/api/queue/status/{task_id}", headers=READER)
    assert r.status_code == 200
    return dict(r.json())


def test_a_child_waits_and_runs_after_its_parent(make_client: MakeClient, qm: QueueManager) -> None:
    client = make_client()
    parent = enqueue(client).json()["task_id"]
    r = enqueue(client, depends_on=[parent])
    assert r.status_code == 202 and r.json()["status"] == "waiting"
    child = r.json()["task_id"]
    record = status_of(client, child)
    assert (record["status"], record["depends_on"], record["waiting_for"]) == (
        "waiting",
        [parent],
        [parent],
    )
    qm.worker().run_until_idle()
    assert status_of(client, child)["status"] == "completed"
    stats = client.get("/api/queue/stats/default", headers=ADMIN).json()
    assert (stats["waiting"], stats["released"]) == (0, 1)


def test_a_failed_parent_cancels_the_child_naming_the_parent(
    make_client: MakeClient, qm: QueueManager
) -> None:
    client = make_client()
    parent = enqueue(client, task_type="boom").json()["task_id"]
    child = enqueue(client, depends_on=[parent]).json()["task_id"]
    qm.worker(retry=RetryPolicy(max_attempts=1)).run_until_idle()
    record = status_of(client, child)
    assert record["status"] == "cancelled" and parent in record["last_error"]


def test_cancel_answers_200_409_and_404(make_client: MakeClient, qm: QueueManager) -> None:
    client = make_client()
    queued = enqueue(client).json()["task_id"]
    r = client.delete(f"/api/queue/tasks/{queued}", headers=PRODUCER)
    assert (r.status_code, r.json()) == (200, {"task_id": queued, "status": "cancelled"})
    again = client.delete(f"/api/queue/tasks/{queued}", headers=PRODUCER)
    assert again.status_code == 200  # already cancelled: the same answer, nothing changes
    done = enqueue(client).json()["task_id"]
    qm.worker().run_until_idle()
    assert status_of(client, queued)["status"] == "cancelled"  # acknowledged, never run
    r = client.delete(f"/api/queue/tasks/{done}", headers=PRODUCER)
    assert r.status_code == 409 and r.json()["error"] == "not_cancellable"
    assert "completed" in r.json()["message"]
    for unknown in ("no-such-task", "x" * 300, "%24where"):
        r = client.delete(f"/api/queue/tasks/{unknown}", headers=PRODUCER)
        assert r.status_code == 404 and r.json()["error"] == "unknown_task"
    assert client.delete(f"/api/queue/tasks/{done}", headers=READER).status_code == 403


@pytest.mark.parametrize(
    "depends_on",
    [
        None,
        "abc",
        {"$gt": ""},
        [1],
        [["nested"]],
        [{"$ne": 1}],
        ["$where"],
        ["a,b"],
        ["x" * 129],
        [f"t{i}" for i in range(101)],
        ["unknown-parent"],
    ],
)
def test_hostile_depends_on_is_422_naming_it_and_queues_nothing(
    make_client: MakeClient, redis: redis_py.Redis, depends_on: Any
) -> None:
    client = make_client()
    r = enqueue(client, depends_on=depends_on)
    assert (r.status_code, r.json().get("field")) == (422, "depends_on"), r.json()
    assert not keys_matching(redis, "ledger:{p*}:task:*")
