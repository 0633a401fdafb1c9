"""Clients cannot grow the label sets of ``/metrics`` (issue 9, finding 12)."""

from __future__ import annotations

from typing import Any

import redis as redis_py

from api.http import metrics
from streams.config import DEFAULT_QUEUES

from .conftest import MakeClient, auth

KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}


def series(name: str) -> set[tuple[tuple[str, str], ...]]:
    """The label sets of a process-local counter or histogram."""
    registry = metrics.REGISTRY
    with registry._lock:
        return set(registry._counters.get(name, {})) | set(registry._histograms.get(name, {}))


def test_made_up_methods_and_paths_add_no_series(make_client: MakeClient) -> None:
    client = make_client(rate_per_s=0)
    names = ("ledger_http_requests_total", "ledger_http_request_duration_seconds")
    before = {n: series(n) for n in names}
    for i in range(150):
        client.request(f"M{i}X", "/health")
        client.request(f"get{i}", f"/api/accounts/u{i}/balance", headers=auth("reader"))
        client.get(f"/made/up/{i}")
        client.request("BREW", f"/x{i}")
    for n in names:
        added = series(n) - before[n]
        methods = {dict(labels)["method"] for labels in added}
        routes = {dict(labels)["route"] for labels in added}
        assert methods <= KNOWN_METHODS, sorted(methods)[:5]
        assert routes <= {"/health", "/api/accounts/{user_id}/balance", "<unmatched>"}, routes
        assert len(added) <= 8, sorted(added)


def test_queue_labels_are_the_configured_queues(
    make_client: MakeClient, redis: redis_py.Redis
) -> None:
    client = make_client(rate_per_s=0)
    for i in range(20):
        refused = client.post(
            "/api/queue/enqueue",
            headers=auth("producer"),
            json={"queue_name": f"q{i}", "task_type": "t", "task_data": {}},
        )
        assert refused.status_code == 422, refused.text
    text = client.get("/metrics", headers=auth("admin")).text
    queues: set[Any] = {
        line.split('queue="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if 'queue="' in line
    }
    assert queues == {q.name for q in DEFAULT_QUEUES}
    assert metrics.method_label("get") == "other" and metrics.status_label(999) == "other"
