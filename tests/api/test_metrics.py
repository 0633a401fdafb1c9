"""GET /metrics: valid Prometheus text 0.0.4 whose numbers follow what happens.

Expositions are read with ``prometheus_client``'s own parser (``parse``), which
also checks that each is well formed; ``promtool check metrics`` lints one too
where Debian's ``prometheus`` package is installed.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_py
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pymongo.database import Database
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from api.http import metrics
from api.http.app import create_app
from api.http.state import AppState
from api.settings import Settings
from projections.runner import project_until_idle
from streams import RetryPolicy

from .conftest import KEYS, PARTITIONS, MakeClient, auth

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
TYPES = {"counter", "gauge", "histogram", "summary", "untyped", "unknown", "info", "stateset"}


def parse(text: str) -> Samples:
    """Every sample of an exposition (``prometheus_client.parser``): each family is
    typed, and no sample appears twice."""
    assert text.endswith("\n")
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.type in TYPES, family
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"sample twice: {s}"
            out[key] = s.value
    return out


def promtool_check(text: str) -> None:
    """``promtool check metrics`` accepts ``text`` (a lint: names, help, types)."""
    promtool = shutil.which("promtool")
    assert promtool is not None
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics", headers=auth("admin"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.text)


def state_of(client: TestClient) -> AppState:
    state: AppState = client.app.state.ledger  # type: ignore[attr-defined]
    return state


@pytest.fixture
def instrumented(
    redis: redis_py.Redis, redis_url: str, mongo_url: str, mongo_db: Database[Any]
) -> Iterator[TestClient]:
    """The app with the observability middleware (``metrics.instrument``)."""
    app = metrics.instrument(
        create_app(
            Settings(
                redis_url=redis_url,
                mongo_url=mongo_url,
                mongo_db=mongo_db.name,
                partitions=PARTITIONS,
                api_keys=KEYS,
            )
        )
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_queue_series_follow_enqueue_and_processing(make_client: MakeClient) -> None:
    client = make_client()
    empty = scrape(client)
    assert value(empty, "ledger_queue_lag", queue="default") == 0
    assert value(empty, "ledger_dead_letters") == 0
    qm = state_of(client).qm
    for i in range(3):
        qm.enqueue(
            "default",
            "db",
            {
                "operation": "insert",
                "collection": "notifications",
                "data": {"_id": f"n{i}", "text": "hi"},
            },
        )
    qm.enqueue("high_priority", "nobody_handles_this", {"x": 1})
    queued = scrape(client)
    assert value(queued, "ledger_queue_length", queue="default") == 3
    assert value(queued, "ledger_queue_lag", queue="default") == 3
    assert value(queued, "ledger_queue_lag", queue="high_priority") == 1
    assert value(queued, "ledger_queue_processed_total", queue="default") == 0
    assert value(queued, "ledger_group_lag", group="workers", level="normal") == 3
    assert value(queued, "ledger_group_lag", group="workers", level="high") == 1
    age = value(queued, "ledger_group_lag_seconds", group="workers")
    assert age is not None and age >= 0
    by_level = {
        lv: value(queued, "ledger_group_level_lag_seconds", group="workers", level=lv)
        for lv in ("critical", "high", "normal", "low")
    }
    assert by_level["critical"] == by_level["low"] == 0  # nothing waits there
    assert by_level["normal"] is not None and 0 <= by_level["normal"] <= age
    qm.worker(retry=RetryPolicy(max_attempts=1)).run_until_idle()
    done = scrape(client)
    assert value(done, "ledger_queue_lag", queue="default") == 0
    assert value(done, "ledger_queue_pending", queue="default") == 0
    assert value(done, "ledger_queue_processed_total", queue="default") == 3
    assert value(done, "ledger_queue_dead_total", queue="high_priority") == 1
    assert value(done, "ledger_dead_letters") == 1
    assert value(done, "ledger_group_lag_seconds", group="workers") == 0
    assert value(done, "ledger_group_level_lag_seconds", group="workers", level="normal") == 0


def test_projection_series_follow_projecting(make_client: MakeClient) -> None:
    client = make_client()
    state = state_of(client)
    state.qm.register_user("ann", "ann@example.com")
    state.qm.purchase("ann", 10, transaction_id="t1")
    before = scrape(client)
    for name in ("balances", "credit_scores", "events"):
        assert value(before, "ledger_projection_lag", projection=name) == 2
        assert value(before, "ledger_projection_pending", projection=name) == 0
        assert (
            value(before, "ledger_projection_checkpoint_timestamp_seconds", projection=name) is None
        )
    assert state.db is not None
    project_until_idle(state.redis, PARTITIONS, state.db)
    after = scrape(client)
    for name in ("balances", "credit_scores", "events"):
        assert value(after, "ledger_projection_lag", projection=name) == 0
        assert value(after, "ledger_projection_lag_seconds", projection=name) == 0
        stamp = value(after, "ledger_projection_checkpoint_timestamp_seconds", projection=name)
        assert stamp is not None and stamp > 1.7e9


def test_http_requests_are_counted_and_timed_by_route_template(instrumented: TestClient) -> None:
    client = instrumented
    ok = {"method": "GET", "route": "/health", "status": "200"}
    first = scrape(client)
    for _ in range(3):
        assert client.get("/health").status_code == 200
    assert client.post("/api/dlq/p0:1-0/requeue", headers=auth("admin")).status_code == 404
    assert client.get("/no/such/page").status_code == 404
    second = scrape(client)
    assert (value(second, "ledger_http_requests_total", **ok) or 0) - (
        value(first, "ledger_http_requests_total", **ok) or 0
    ) == 3
    assert (
        value(
            second,
            "ledger_http_requests_total",
            method="POST",
            route="/api/dlq/{entry_id}/requeue",
            status="404",
        )
        is not None
    )
    assert (
        value(second, "ledger_http_requests_total", method="GET", route="<unmatched>", status="404")
        is not None
    )
    # no path with an id ever becomes a label value
    assert not any("p0:1-0" in v for _, labels in second for _, v in labels)
    count = value(
        second, "ledger_http_request_duration_seconds_count", method="GET", route="/health"
    )
    inf = value(
        second,
        "ledger_http_request_duration_seconds_bucket",
        method="GET",
        route="/health",
        le="+Inf",
    )
    assert count is not None and count >= 3 and inf == count
    buckets = [
        v
        for (n, labels), v in second.items()
        if n == "ledger_http_request_duration_seconds_bucket" and ("route", "/health") in labels
    ]
    assert len(buckets) == len(metrics.DURATION_BUCKETS) + 1
    # the scrapes themselves are counted too
    assert (
        value(second, "ledger_http_requests_total", method="GET", route="/metrics", status="200")
        is not None
    )


def test_an_exception_is_counted_as_a_500() -> None:
    instruments = metrics.Instruments()

    async def boom(request: Request) -> Response:
        raise RuntimeError("kaput")

    app = Starlette(
        routes=[Route("/boom/{x}", boom)],
        middleware=[Middleware(metrics.MetricsMiddleware, instruments=instruments)],
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/boom/1").status_code == 500
        assert client.get("/boom/2").status_code == 500
    assert (
        instruments.value(
            "ledger_http_requests_total", method="GET", route="/boom/{x}", status="500"
        )
        == 2
    )


def test_refused_requests_are_counted(instrumented: TestClient) -> None:
    labels = {"method": "GET", "route": "/api/projections", "status": "401"}
    before = metrics.INSTRUMENTS.value("ledger_http_requests_total", **labels)
    assert instrumented.get("/api/projections").status_code == 401
    assert metrics.INSTRUMENTS.value("ledger_http_requests_total", **labels) - before == 1


def test_record_append_counts_by_result_and_reason(make_client: MakeClient) -> None:
    before = scrape(make_client())
    metrics.record_append("accepted")
    metrics.record_append("accepted", 2)
    metrics.record_append("insufficient_credits")
    metrics.record_append("duplicate")  # an idempotent replay: not a refusal
    metrics.record_append("made up by nobody")  # not a code: bounded to "other"
    after = scrape(make_client())

    def delta(**labels: str) -> float:
        return (value(after, "ledger_appends_total", **labels) or 0) - (
            value(before, "ledger_appends_total", **labels) or 0
        )

    assert delta(result="accepted", reason="") == 3
    assert delta(result="replayed", reason="") == 1
    assert delta(result="refused", reason="insufficient_credits") == 1
    assert delta(result="refused", reason="other") == 1
    assert delta(result="refused", reason="duplicate") == 0


def test_appends_through_the_api_count_replays_apart(instrumented: TestClient) -> None:
    client = instrumented
    producer = {**auth("producer"), "Idempotency-Key": "buy-once"}
    assert (
        client.post(
            "/api/users", json={"user_id": "ann", "email": "a@x"}, headers=auth("producer")
        ).status_code
        == 201
    )
    before = scrape(client)
    for _ in range(3):
        r = client.post(
            "/api/accounts/ann/purchases",
            json={"amount": 5, "transaction_id": "t1"},
            headers=producer,
        )
        assert r.status_code == 201, r.text
    refused = client.post(
        "/api/accounts/ann/usage", json={"amount": 1000}, headers=auth("producer")
    )
    assert refused.status_code == 409, refused.text
    after = scrape(client)

    def delta(**labels: str) -> float:
        return (value(after, "ledger_appends_total", **labels) or 0) - (
            value(before, "ledger_appends_total", **labels) or 0
        )

    assert delta(result="accepted", reason="") == 1
    assert delta(result="replayed", reason="") == 2
    assert delta(result="refused", reason="insufficient_credits") == 1
    assert not any(
        dict(labels).get("reason") == "duplicate" for n, labels in after if n.startswith("ledger_")
    )


@pytest.mark.slow  # waits out MongoDB's server selection
def test_redis_series_are_served_while_mongo_is_down(make_client: MakeClient) -> None:
    client = make_client(mongo_url="mongodb://127.0.0.1:1/")
    state_of(client).qm.enqueue("default", "work", {"n": 1})
    samples = scrape(client)
    assert value(samples, "ledger_queue_lag", queue="default") == 1
    assert value(samples, "ledger_projection_lag", projection="balances") == 1
    assert not any(n == "ledger_projection_checkpoint_timestamp_seconds" for n, _ in samples)


def test_metrics_need_admin_when_keys_are_configured(make_client: MakeClient) -> None:
    client = make_client()
    assert client.get("/metrics").status_code == 401
    for role in ("reader", "producer"):
        assert client.get("/metrics", headers=auth(role)).status_code == 403
    assert client.get("/metrics", headers=auth("admin")).status_code == 200
    assert make_client(api_keys={}).get("/metrics").status_code == 200


def test_label_values_are_escaped() -> None:
    instruments = metrics.Instruments()
    instruments.requests.labels("GET", 'a "quoted"\nline \\ end', "200").inc()
    instruments.duration.labels("GET", "/").observe(0.03)
    samples = parse(generate_latest(instruments.registry).decode())
    assert (
        value(
            samples,
            "ledger_http_requests_total",
            method="GET",
            route='a "quoted"\nline \\ end',
            status="200",
        )
        == 1
    )
    labels = {"method": "GET", "route": "/"}
    assert value(samples, "ledger_http_request_duration_seconds_bucket", le="0.025", **labels) == 0
    assert value(samples, "ledger_http_request_duration_seconds_bucket", le="0.05", **labels) == 1
    assert value(samples, "ledger_http_request_duration_seconds_sum", **labels) == 0.03


def test_the_exposition_keeps_every_name_and_label_set(make_client: MakeClient) -> None:
    """The names and label sets dashboards and alert rules are written against."""
    client = make_client()
    state_of(client).qm.register_user("ann", "ann@example.com")
    assert client.get("/health").status_code == 200
    text = client.get("/metrics", headers=auth("admin")).text
    found: dict[str, set[frozenset[str]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, set()).add(frozenset(s.labels))
    expected = {
        "ledger_http_requests_total": {"method", "route", "status"},
        "ledger_http_request_duration_seconds_bucket": {"method", "route", "le"},
        "ledger_http_request_duration_seconds_sum": {"method", "route"},
        "ledger_http_request_duration_seconds_count": {"method", "route"},
        "ledger_appends_total": {"result", "reason"},
        **{
            f"ledger_queue_{k}": {"queue"}
            for k in ("length", "pending", "lag", "consumers", "waiting")
        },
        **{
            f"ledger_queue_{k}_total": {"queue"}
            for k in (
                "processed",
                "failed",
                "retried",
                "dead",
                "cancelled",
                "released",
                "dependents_cancelled",
            )
        },
        "ledger_group_pending": {"group", "level"},
        "ledger_group_lag": {"group", "level"},
        "ledger_group_lag_seconds": {"group"},
        "ledger_group_level_lag_seconds": {"group", "level"},
        "ledger_schedule_fired_total": set(),
        "ledger_schedules": set(),
        "ledger_dead_letters": set(),
        "ledger_redis_up": set(),
        **{f"ledger_projection_{k}": {"projection"} for k in ("pending", "lag", "lag_seconds")},
    }
    for name, labels in expected.items():
        assert found.get(name) == {frozenset(labels)}, (name, found.get(name))
    assert found.get("ledger_http_processes") == {frozenset()}
    assert parse(text)[("ledger_http_processes", frozenset())] == 1
    # no _created series: the same names whether one process answers or many
    assert not any(n.endswith("_created") for n in found)


def test_promtool_accepts_the_exposition(make_client: MakeClient) -> None:
    client = make_client()
    state = state_of(client)
    state.qm.register_user("ann", "ann@example.com")
    state.qm.enqueue("default", "nobody_handles_this", {"x": 1})
    assert state.db is not None
    project_until_idle(state.redis, PARTITIONS, state.db)
    client.get("/health")
    client.get("/no/such/page")
    metrics.record_append("insufficient_credits")
    promtool_check(client.get("/metrics", headers=auth("admin")).text)


def test_counters_are_served_while_redis_cannot_be_read(
    instrumented: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams.errors import Unavailable

    assert value(scrape(instrumented), "ledger_redis_up") == 1

    def down(*args: Any, **kwargs: Any) -> Any:
        raise Unavailable("redis is down (simulated)")

    monkeypatch.setattr(metrics, "queues_status", down)
    assert instrumented.get("/health").status_code == 200
    samples = scrape(instrumented)
    assert value(samples, "ledger_redis_up") == 0
    assert not any(n.startswith(("ledger_queue_", "ledger_projection_")) for n, _ in samples)
    ok = value(samples, "ledger_http_requests_total", method="GET", route="/health", status="200")
    assert ok is not None and ok >= 1
