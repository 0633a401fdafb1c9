"""Clients cannot grow the label sets of ``/metrics`` (issue 9, finding 12)."""

from __future__ import annotations

from typing import Any

import redis as redis_py
from prometheus_client.parser import text_string_to_metric_families

from api.http import metrics
from streams.config import DEFAULT_QUEUES

from .conftest import MakeClient, auth

KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}


def series(name: str) -> set[tuple[tuple[str, str], ...]]:
    """The label sets of a counter or histogram of this process (``le`` left out)."""
    return {tuple(sorted(labels)) for labels in metrics.INSTRUMENTS.label_sets(name)}


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
        s.labels["queue"]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if "queue" in s.labels
    }
    assert queues == {q.name for q in DEFAULT_QUEUES}
    assert metrics.method_label("get") == "other" and metrics.status_label(999) == "other"


def test_refusal_reasons_are_the_known_codes() -> None:
    before = metrics.INSTRUMENTS.label_sets("ledger_appends_total")
    for i in range(50):
        metrics.record_append(f"made_up_{i}")
    added = metrics.INSTRUMENTS.label_sets("ledger_appends_total") - before
    assert added <= {frozenset({("result", "refused"), ("reason", "other")})}, added
