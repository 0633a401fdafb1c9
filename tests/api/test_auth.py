"""Roles on every endpoint: 401 without a key, 403 with a too-weak one, allowed otherwise."""

from __future__ import annotations

import pytest

from .conftest import MakeClient, auth

# method, path, body, the weakest role allowed
ENDPOINTS: list[tuple[str, str, object, str]] = [
    (
        "POST",
        "/api/queue/enqueue",
        {"queue_name": "default", "task_type": "t", "task_data": {}},
        "producer",
    ),
    ("GET", "/api/queue/status/some-task", None, "reader"),
    ("GET", "/api/queue/stats", None, "admin"),
    ("GET", "/api/queue/stats/default", None, "admin"),
    ("POST", "/api/queue/example/credit-purchase", {}, "producer"),
    ("POST", "/api/queue/example/user-registration", {}, "producer"),
    ("POST", "/api/queue/example/credit-update", {}, "producer"),
    ("POST", "/api/users", {"user_id": "u1", "email": "u1@example.com"}, "producer"),
    ("POST", "/api/accounts/u1/purchases", {"amount": 5, "transaction_id": "t1"}, "producer"),
    ("POST", "/api/accounts/u1/usage", {"amount": 1}, "producer"),
    ("POST", "/api/accounts/u1/adjustments", {"delta": 1, "reason": "r"}, "admin"),
    (
        "POST",
        "/api/events:batch",
        {"events": [{"kind": "register_user", "user_id": "u2", "email": "a@b"}]},
        "producer",
    ),
    ("GET", "/api/accounts/u1/balance", None, "reader"),
    ("GET", "/api/accounts/u1/credit-score", None, "reader"),
    ("GET", "/api/accounts/u1/events", None, "reader"),
]
ROLES = ("reader", "producer", "admin")


@pytest.mark.parametrize(
    ("method", "path", "body", "role"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS]
)
def test_roles(make_client: MakeClient, method: str, path: str, body: object, role: str) -> None:
    client = make_client()
    anonymous = client.request(method, path, json=body)
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthorized"
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    wrong = client.request(
        method, path, json=body, headers={"Authorization": "Bearer not-a-real-key-000000"}
    )
    assert wrong.status_code == 401
    for have in ROLES:
        r = client.request(method, path, json=body, headers=auth(have))
        if ROLES.index(have) < ROLES.index(role):
            assert r.status_code == 403 and r.json()["error"] == "forbidden", (have, r.json())
        else:
            assert r.status_code not in (401, 403), (have, r.json())


def test_a_refused_role_changes_nothing(make_client: MakeClient) -> None:
    client = make_client()
    client.post("/api/users", json={"user_id": "ann", "email": "a@b"}, headers=auth("producer"))
    r = client.post(
        "/api/accounts/ann/adjustments",
        json={"delta": 100, "reason": "gift"},
        headers=auth("producer"),
    )
    assert r.status_code == 403
    ok = client.post(
        "/api/accounts/ann/adjustments", json={"delta": 1, "reason": "gift"}, headers=auth("admin")
    )
    assert ok.json()["version"] == 2 and ok.json()["balance"] == 1


def test_no_keys_configured_means_admin(make_client: MakeClient) -> None:
    client = make_client(api_keys={})
    assert client.get("/api/queue/stats").status_code == 200


def test_public_routes_need_no_key(make_client: MakeClient) -> None:
    client = make_client()
    for path in ("/health", "/ready", "/openapi.json"):
        assert client.get(path).status_code == 200, path
