"""Health and readiness."""

from __future__ import annotations

from .conftest import MakeClient


def test_health_and_ready(make_client: MakeClient) -> None:
    client = make_client()
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"redis": "ok", "mongo": "ok"}}


def test_ready_is_503_when_redis_is_down(make_client: MakeClient) -> None:
    client = make_client(redis_url="redis://127.0.0.1:1/0")
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("unavail")


def test_unknown_path_is_a_json_404(make_client: MakeClient) -> None:
    response = make_client().get("/no/such/thing")
    assert response.status_code == 404 and response.json()["error"] == "not_found"
