"""GET /metrics: valid Prometheus text 0.0.4 whose numbers follow what happens."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_py
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

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
VALUE = r"(?:[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|NaN|[-+]Inf)"
SAMPLE_RE = re.compile(rf"^({NAME})(?:\{{((?:{LABEL})(?:,{LABEL})*)?\}})? ({VALUE})(?: -?\d+)?$")
HELP_RE = re.compile(rf"^# HELP ({NAME}) .*$")
TYPE_RE = re.compile(rf"^# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)$")
PAIR_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def parse(text: str) -> Samples:
    """Every line must be a HELP, TYPE or sample line; samples follow their TYPE."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    out: Samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP"):
            assert HELP_RE.match(line), line
            continue
        if line.startswith("# TYPE"):
            m = TYPE_RE.match(line)
            assert m, line
            assert m.group(1) not in types, f"TYPE twice: {line}"
            types[m.group(1)] = m.group(2)
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"not an exposition line: {line!r}"
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or (family in types and types[family] == "histogram"), line
        key = (name, frozenset((k, unescape(v)) for k, v in PAIR_RE.findall(labels)))
        assert key not in out, f"sample twice: {line}"
        out[key] = float(value)
    return out


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
    qm.worker(retry=RetryPolicy(max_attempts=1)).run_until_idle()
    done = scrape(client)
    assert value(done, "ledger_queue_lag", queue="default") == 0
    assert value(done, "ledger_queue_pending", queue="default") == 0
    assert value(done, "ledger_queue_processed_total", queue="default") == 3
    assert value(done, "ledger_queue_dead_total", queue="high_priority") == 1
    assert value(done, "ledger_dead_letters") == 1
    assert value(done, "ledger_group_lag_seconds", group="workers") == 0


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
    registry = metrics.Registry()

    async def boom(request: Request) -> Response:
        raise RuntimeError("kaput")

    app = Starlette(
        routes=[Route("/boom/{x}", boom)],
        middleware=[Middleware(metrics.MetricsMiddleware, registry=registry)],
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/boom/1").status_code == 500
        assert client.get("/boom/2").status_code == 500
    assert (
        registry.value("ledger_http_requests_total", method="GET", route="/boom/{x}", status="500")
        == 2
    )


def test_refused_requests_are_counted(instrumented: TestClient) -> None:
    labels = {"method": "GET", "route": "/api/projections", "status": "401"}
    before = metrics.REGISTRY.value("ledger_http_requests_total", **labels)
    assert instrumented.get("/api/projections").status_code == 401
    assert metrics.REGISTRY.value("ledger_http_requests_total", **labels) - before == 1


def test_record_append_counts_by_result_and_reason(make_client: MakeClient) -> None:
    before = scrape(make_client())
    metrics.record_append("accepted")
    metrics.record_append("accepted", 2)
    metrics.record_append("insufficient_credits")
    after = scrape(make_client())

    def delta(**labels: str) -> float:
        return (value(after, "ledger_appends_total", **labels) or 0) - (
            value(before, "ledger_appends_total", **labels) or 0
        )

    assert delta(result="accepted", reason="") == 3
    assert delta(result="refused", reason="insufficient_credits") == 1


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
    registry = metrics.Registry()
    registry.inc("x_total", "help with a \\ backslash", {"v": 'a "quoted"\nline \\ end'})
    registry.observe("y_seconds", "h", {"r": "/"}, 0.03)
    out = metrics.Exposition()
    registry.write(out)
    samples = parse(out.render())
    assert value(samples, "x_total", v='a "quoted"\nline \\ end') == 1
    assert value(samples, "y_seconds_bucket", r="/", le="0.025") == 0
    assert value(samples, "y_seconds_bucket", r="/", le="0.05") == 1
    assert value(samples, "y_seconds_sum", r="/") == 0.03
