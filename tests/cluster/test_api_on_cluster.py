"""The HTTP API, the projectors and the operators' views on a real 3-master cluster."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.database import Database
from starlette.testclient import TestClient

from api.http import metrics
from api.http.app import create_app
from api.settings import Settings
from projections.runner import project_until_idle
from streams import QueueManager, StreamsConfig

pytestmark = pytest.mark.cluster

PARTITIONS = 8


def test_the_api_appends_reads_and_reports_on_a_cluster(
    redis_cluster: str, mongo_url: str, mongo_db: Database[Any]
) -> None:
    settings = Settings(
        redis_url=redis_cluster, mongo_url=mongo_url, mongo_db=mongo_db.name, partitions=PARTITIONS
    )
    app = metrics.instrument(create_app(settings))
    with TestClient(app, raise_server_exceptions=False) as client:
        users = [f"api-{i}" for i in range(6)]
        for user in users:
            r = client.post("/api/users", json={"user_id": user, "email": f"{user}@example.com"})
            assert r.status_code == 201, r.text
            r = client.post(
                f"/api/accounts/{user}/purchases",
                json={"amount": 100, "currency": "USD", "transaction_id": f"t-{user}"},
                headers={"Idempotency-Key": f"k-{user}"},
            )
            assert r.status_code == 201, r.text
        again = client.post(
            "/api/accounts/api-0/purchases",
            json={"amount": 100, "currency": "USD", "transaction_id": "t-api-0"},
            headers={"Idempotency-Key": "k-api-0"},
        )
        assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
        over = client.post("/api/accounts/api-1/usage", json={"amount": 101, "reason": "x"})
        assert over.status_code == 409 and over.json()["error"] == "insufficient_credits"
        batch = client.post(
            "/api/events:batch",
            json={"events": [{"kind": "use", "user_id": u, "amount": 10} for u in users]},
        )
        assert batch.status_code == 200, batch.text
        task = client.post(
            "/api/queue/enqueue",
            json={
                "queue_name": "default",
                "task_type": "credit_calculation",
                "task_data": {"user_id": "api-2"},
                "priority": 2,
                "delay": 0,
            },
        )
        assert task.status_code == 202, task.text

        qm = QueueManager(config=StreamsConfig(redis_url=redis_cluster, partitions=PARTITIONS))
        try:
            project_until_idle(qm.redis, PARTITIONS, mongo_db)
        finally:
            qm.close()
        balance = client.get("/api/accounts/api-3/balance", params={"min_version": 3})
        assert balance.status_code == 200, balance.text
        assert balance.json()["balance"] == 90
        events = client.get("/api/accounts/api-3/events")
        assert events.status_code == 200 and len(events.json()["events"]) == 3

        stats = client.get("/api/queue/stats")
        assert stats.status_code == 200, stats.text
        # 6 registrations, 6 purchases, 6 uses and 1 task, over partitions on every master
        assert stats.json()["default"]["length"] == 19
        assert 'ledger_queue_length{queue="default"} 19' in client.get("/metrics").text
        projections = client.get("/api/projections").json()
        assert [(p["pending"], p["lag"]) for p in projections] == [(0, 0)] * 3
        for path in ("/api/projections", "/api/ops/overview", "/api/dlq", "/ready", "/metrics"):
            r = client.get(path)
            assert r.status_code == 200, (path, r.text)
