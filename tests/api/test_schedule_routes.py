"""/api/schedules end to end: admin only, strict bodies, a fired tick runs through a worker."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis as redis_py
from jsonschema import Draft202012Validator

from api.http.app import routes
from api.http.openapi import document
from streams import QueueManager, Scheduler, keys, schedules

from .conftest import PARTITIONS, MakeClient, auth
from .test_openapi import inline

ADMIN = auth("admin")
PRODUCER = auth("producer")
READER = auth("reader")
DOC = document(routes())
BODY: dict[str, Any] = {
    "cron": "*/5 * * * *",
    "queue_name": "default",
    "task_type": "report",
    "task_data": {"kind": "daily"},
}


def valid(name: str, value: Any) -> None:
    Draft202012Validator(inline(DOC["components"]["schemas"][name], DOC)).validate(value)


def test_put_get_list_replace_delete(make_client: MakeClient) -> None:
    client = make_client()
    r = client.put("/api/schedules/daily-report", json=BODY, headers=ADMIN)
    assert r.status_code == 201, r.text
    created = r.json()
    valid("Schedule", created)
    assert created["name"] == "daily-report" and created["cron"] == "*/5 * * * *"
    assert created["timezone"] == "UTC" and created["priority"] == 2
    assert created["next_run_at"].endswith("Z") and created["last_run_at"] is None

    r = client.put(
        "/api/schedules/daily-report",
        json={**BODY, "cron": "0 9 * * 1-5", "timezone": "America/New_York", "priority": 3},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    assert r.json()["cron"] == "0 9 * * 1-5" and r.json()["priority"] == 3

    r = client.get("/api/schedules", headers=ADMIN)
    assert r.status_code == 200
    valid("Schedules", r.json())
    assert [s["name"] for s in r.json()["schedules"]] == ["daily-report"]
    r = client.get("/api/schedules/daily-report", headers=ADMIN)
    assert r.status_code == 200 and r.json()["timezone"] == "America/New_York"

    assert client.delete("/api/schedules/daily-report", headers=ADMIN).status_code == 204
    assert client.delete("/api/schedules/daily-report", headers=ADMIN).status_code == 404
    assert client.get("/api/schedules/daily-report", headers=ADMIN).status_code == 404
    assert client.get("/api/schedules", headers=ADMIN).json() == {"schedules": []}


@pytest.mark.parametrize("headers", [{}, READER, PRODUCER])
def test_admin_only(make_client: MakeClient, headers: dict[str, str]) -> None:
    client = make_client()
    want = 401 if not headers else 403
    assert client.put("/api/schedules/x", json=BODY, headers=headers).status_code == want
    assert client.get("/api/schedules", headers=headers).status_code == want
    assert client.get("/api/schedules/x", headers=headers).status_code == want
    assert client.delete("/api/schedules/x", headers=headers).status_code == want
    assert client.get("/api/schedules", headers=ADMIN).json() == {"schedules": []}


@pytest.mark.parametrize(
    ("name", "change", "field", "status"),
    [
        ("ok", {"cron": "* * * *"}, "cron", 422),
        ("ok", {"cron": "99 * * * *"}, "cron", 422),
        ("ok", {"cron": "* * * * * * *"}, "cron", 422),
        ("ok", {"cron": 5}, "cron", 422),
        ("ok", {"cron": None}, "cron", 422),
        ("ok", {"timezone": "Nowhere/City"}, "timezone", 422),
        ("ok", {"timezone": "../../etc/passwd"}, "timezone", 422),
        ("ok", {"timezone": 3}, "timezone", 422),
        ("x" * 65, {}, "name", 422),
        ("bad%20name", {}, "name", 422),
        ("a:b", {}, "name", 422),
        ("ok", {"cron": ...}, "cron", 422),
        ("ok", {"task_data": ...}, "task_data", 422),
        ("ok", {"task_data": "text"}, "task_data", 422),
        ("ok", {"task_data": {"$where": 1}}, "task_data.$where", 422),
        ("ok", {"queue_name": "nope"}, "queue_name", 422),
        ("ok", {"queue_name": 7}, "queue_name", 422),
        ("ok", {"task_type": ["x"]}, "task_type", 422),
        ("ok", {"priority": 0}, "priority", 422),
        ("ok", {"priority": "urgent"}, "priority", 422),
        ("ok", {"priority": None}, "priority", 422),
        ("ok", {"extra": 1}, "extra", 422),
        ("ok", {"task_data": {"blob": "x" * 300_000}}, "task_data", 413),
    ],
)
def test_hostile_bodies_name_the_field_and_change_nothing(
    make_client: MakeClient,
    redis: redis_py.Redis,
    name: str,
    change: dict[str, Any],
    field: str,
    status: int,
) -> None:
    client = make_client()
    body = {k: v for k, v in {**BODY, **change}.items() if v is not ...}
    r = client.put(f"/api/schedules/{name}", json=body, headers=ADMIN)
    assert r.status_code == status, r.text
    valid("Error", r.json())
    assert r.json()["field"] == field, r.json()
    assert redis.zcard(keys.SCHEDULES) == 0 and not redis.keys("ledger:{sched}:*")


def test_a_body_that_is_not_json_is_refused(make_client: MakeClient) -> None:
    client = make_client()
    r = client.put(
        "/api/schedules/x",
        content=json.dumps(BODY)[:-1],
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert client.get("/api/schedules", headers=ADMIN).json() == {"schedules": []}


def test_a_tick_fires_one_task_that_a_worker_completes(
    make_client: MakeClient, qm: QueueManager
) -> None:
    ran: list[dict[str, Any]] = []
    qm.registry.register("report", lambda data, db: not ran.append(dict(data)))  # type: ignore[func-returns-value]
    client = make_client()
    r = client.put("/api/schedules/rep", json={**BODY, "cron": "0 0 1 1 *"}, headers=ADMIN)
    assert r.status_code == 201
    tick = 1767225600000  # as if due since 2026-01-01 and no scheduler ran
    qm.redis.hset(keys.schedule("rep"), "next_run_at", tick)
    qm.redis.zadd(keys.SCHEDULES, {"rep": tick})
    assert Scheduler(qm.redis, PARTITIONS).fire() == 1
    qm.worker().run_until_idle(timeout=30)
    assert ran == [{"kind": "daily"}]
    task_id = schedules.task_id("rep", tick)
    r = client.get(f"/api/queue/status/{task_id}", headers=READER)
    assert r.status_code == 200 and r.json()["status"] == "completed"
    got = client.get("/api/schedules/rep", headers=ADMIN).json()
    assert got["last_task_id"] == task_id and got["last_run_at"] == "2026-01-01T00:00:00.000Z"
    metrics = client.get("/metrics", headers=ADMIN).text
    assert "ledger_schedule_fired_total 1" in metrics
