"""The original /api/queue endpoints end to end: enqueue over HTTP, a real worker runs it."""

from __future__ import annotations

from typing import Any

import pytest
import redis as redis_py
from pymongo.database import Database

from streams import QueueManager
from tests.streamlog import keys_matching

from .conftest import MakeClient, auth

PRODUCER = auth("producer")
ADMIN = auth("admin")
READER = auth("reader")


def run_worker(qm: QueueManager) -> int:
    return qm.worker().run_until_idle(timeout=30)


def test_enqueue_status_and_worker(
    make_client: MakeClient, qm: QueueManager, mongo_db: Database[Any]
) -> None:
    client = make_client()
    body = {
        "queue_name": "high_priority",
        "task_type": "store",
        "task_data": {
            "operation": "insert",
            "collection": "analytics",
            "data": {"_id": "a1", "clicks": 3},
        },
        "priority": 3,
        "delay": 0,
    }
    r = client.post("/api/queue/enqueue", json=body, headers=PRODUCER)
    assert r.status_code == 202
    task_id = r.json()["task_id"]
    assert r.json() == {"task_id": task_id, "queue_name": "high_priority", "status": "queued"}
    status = client.get(f"/api/queue/status/{task_id}", headers=READER).json()
    assert status["status"] == "queued" and status["attempts"] == 0
    assert set(status) == {
        "task_id",
        "status",
        "attempts",
        "queue_name",
        "task_type",
        "enqueued_at",
        "started_at",
        "finished_at",
        "last_error",
        "depends_on",
        "waiting_for",
    }
    assert (status["depends_on"], status["waiting_for"]) == ([], [])
    assert run_worker(qm) == 1
    done = client.get(f"/api/queue/status/{task_id}", headers=READER).json()
    assert (done["status"], done["attempts"], done["task_type"]) == ("completed", 1, "store")
    assert done["finished_at"] is not None
    assert mongo_db.analytics.find_one({"_id": "a1"}) == {"_id": "a1", "clicks": 3}
    stats = client.get("/api/queue/stats/high_priority", headers=ADMIN).json()
    assert stats["processed"] == 1 and stats["queue_name"] == "high_priority"
    every = client.get("/api/queue/stats", headers=ADMIN).json()
    assert set(every) >= {"default", "high_priority", "low_priority"}


def test_priority_and_delay_are_optional(make_client: MakeClient) -> None:
    client = make_client()
    base = {"queue_name": "default", "task_type": "t", "task_data": {"n": 1}}
    assert client.post("/api/queue/enqueue", json=base, headers=PRODUCER).status_code == 202
    now = client.post("/api/queue/enqueue", json={**base, "delay": 0.0001}, headers=PRODUCER)
    assert now.json()["status"] == "queued"  # under a millisecond: no delay at all
    later = client.post("/api/queue/enqueue", json={**base, "delay": 60}, headers=PRODUCER)
    assert later.status_code == 202 and later.json()["status"] == "scheduled"
    status = client.get(f"/api/queue/status/{later.json()['task_id']}", headers=READER).json()
    assert status["status"] == "scheduled"


def test_enqueue_idempotency_key(make_client: MakeClient, redis: redis_py.Redis) -> None:
    client = make_client()
    body = {"queue_name": "default", "task_type": "t", "task_data": {"n": 1}}
    headers = {**PRODUCER, "Idempotency-Key": "job-7"}
    first = client.post("/api/queue/enqueue", json=body, headers=headers)
    again = client.post("/api/queue/enqueue", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["task_id"] == again.json()["task_id"]
    assert len(keys_matching(redis, "ledger:{p*}:task:*")) == 1  # the pattern other tests rely on
    other = client.post("/api/queue/enqueue", json={**body, "task_data": {"n": 2}}, headers=headers)
    assert other.status_code == 409 and other.json()["error"] == "idempotency_key_reused"


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        (
            {
                "task_data": {
                    "operation": "update",
                    "collection": "users",
                    "data": {"a": 1},
                    "filter": {"$where": "1"},
                }
            },
            422,
            "task_data.filter.$where",
        ),
        (
            {"task_data": {"operation": "insert", "collection": "balances", "data": {}}},
            422,
            "task_data.collection",
        ),
        ({"task_data": {"a": {"$gt": 1}}}, 422, "task_data.a.$gt"),
        ({"task_data": []}, 422, "task_data"),
        ({"queue_name": "nope"}, 422, "queue_name"),
        ({"task_type": "bad type"}, 422, "task_type"),
        ({"priority": 5}, 422, "priority"),
        ({"priority": "high"}, 422, "priority"),
        ({"priority": None}, 422, "priority"),
        ({"delay": -1}, 422, "delay"),
        ({"delay": True}, 422, "delay"),
        ({"extra": 1}, 422, "extra"),
        ({"task_data": {"blob": "x" * 70_000}}, 413, "task_data"),
    ],
)
def test_enqueue_refuses_bad_bodies(
    make_client: MakeClient, redis: redis_py.Redis, change: dict[str, Any], status: int, field: str
) -> None:
    client = make_client()
    body = {"queue_name": "default", "task_type": "t", "task_data": {"n": 1}, **change}
    r = client.post("/api/queue/enqueue", json=body, headers=PRODUCER)
    assert (r.status_code, r.json().get("field")) == (status, field), r.json()
    assert not keys_matching(redis, "ledger:{p*}:task:*")  # nothing was queued


def test_missing_fields_are_named(make_client: MakeClient) -> None:
    client = make_client()
    r = client.post(
        "/api/queue/enqueue", json={"queue_name": "default", "task_type": "t"}, headers=PRODUCER
    )
    assert r.status_code == 422 and r.json()["field"] == "task_data"


def test_unknown_task_and_queue_are_404(make_client: MakeClient) -> None:
    client = make_client()
    for task_id in ("no-such-task", "x" * 300):
        r = client.get(f"/api/queue/status/{task_id}", headers=READER)
        assert r.status_code == 404 and r.json()["error"] == "unknown_task"
    r = client.get("/api/queue/stats/nope", headers=ADMIN)
    assert r.status_code == 404 and r.json()["error"] == "unknown_queue"


def test_examples_enqueue_tasks_the_db_handler_runs(
    make_client: MakeClient, qm: QueueManager, mongo_db: Database[Any]
) -> None:
    client = make_client()
    bought = client.post(
        "/api/queue/example/credit-purchase",
        json={"user_id": "zed", "amount": 25},
        headers=PRODUCER,
    )
    assert bought.status_code == 202 and bought.json()["queue_name"] == "high_priority"
    joined = client.post("/api/queue/example/user-registration", headers=PRODUCER)
    assert joined.status_code == 202 and joined.json()["queue_name"] == "default"
    updated = client.post("/api/queue/example/credit-update", json={"delta": -3}, headers=PRODUCER)
    assert updated.status_code == 202
    assert run_worker(qm) == 3
    for r in (bought, joined, updated):
        status = client.get(f"/api/queue/status/{r.json()['task_id']}", headers=READER)
        assert status.json()["status"] == "completed"
    purchase = mongo_db.credit_purchases.find_one({"user_id": "zed"})
    assert purchase is not None and purchase["amount"] == 25
    assert mongo_db.users.count_documents({}) == 1
    assert mongo_db.credit_updates.find_one({})["delta"] == -3  # type: ignore[index]


def test_examples_validate_their_bodies(make_client: MakeClient) -> None:
    client = make_client()
    for body, field in (
        ({"amount": 10.0}, "amount"),
        ({"amount": 0}, "amount"),
        ({"user_id": "a b"}, "user_id"),
        ({"color": "red"}, "color"),
    ):
        r = client.post("/api/queue/example/credit-purchase", json=body, headers=PRODUCER)
        assert r.status_code == 422 and r.json()["field"] == field, body
    r = client.post("/api/queue/example/credit-update", json={"delta": 0}, headers=PRODUCER)
    assert r.status_code == 422 and r.json()["field"] == "delta"
    r = client.post(
        "/api/queue/example/user-registration", json={"email": "nope"}, headers=PRODUCER
    )
    assert r.status_code == 422 and r.json()["field"] == "email"


def test_the_registration_example_builds_a_valid_default_email_from_any_user_id(
    make_client: MakeClient,
) -> None:
    """Only an email the client sent can be refused: the default one is built from
    the letters and digits of the user id, which may hold "@" or start with "."."""
    client = make_client()
    for user_id in ("@9", "a@b@c", "..", "x" * 128):
        r = client.post(
            "/api/queue/example/user-registration", json={"user_id": user_id}, headers=PRODUCER
        )
        assert r.status_code == 202, (user_id, r.json())
    r = client.post(
        "/api/queue/example/user-registration",
        json={"user_id": "@9", "email": "no-at-sign"},
        headers=PRODUCER,
    )
    assert (r.status_code, r.json()["field"]) == (422, "email")
