"""Every error the edge produces: status, JSON shape, field, and that nothing changed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_py

from api.http.schemas import MAX_BODY_BYTES, MAX_JSON_DEPTH

from .conftest import MakeClient, auth

PRODUCER = auth("producer")
READER = auth("reader")
JSON = {"Content-Type": "application/json"}


def error_of(r: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    body: dict[str, Any] = r.json()
    assert isinstance(body["error"], str) and isinstance(body["message"], str)
    assert "Traceback" not in r.text
    if code is not None:
        assert body["error"] == code, body
    return body


def post_raw(client: Any, content: bytes | Iterator[bytes], headers: dict[str, str]) -> Any:
    return client.post("/api/users", content=content, headers={**PRODUCER, **headers})


def test_415_unless_the_body_is_declared_json(
    make_client: MakeClient, redis: redis_py.Redis
) -> None:
    client = make_client()
    body = json.dumps({"user_id": "u", "email": "u@x"}).encode()
    for headers in (
        {},
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/jsonx"},
        {"Content-Type": "application/json; charset=latin-1"},
    ):
        error_of(post_raw(client, body, headers), 415, "unsupported_media_type")
    ok = post_raw(client, body, {"Content-Type": "application/json; charset=UTF-8"})
    assert ok.status_code == 201


def test_413_by_declared_or_streamed_size(make_client: MakeClient) -> None:
    client = make_client()
    big = b'{"user_id": "u", "email": "' + b"a" * MAX_BODY_BYTES + b'"}'
    error_of(post_raw(client, big, JSON), 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length at all
        for _ in range(20):
            yield b" " * (MAX_BODY_BYTES // 10)

    error_of(post_raw(client, chunks(), JSON), 413, "payload_too_large")
    lying = post_raw(client, big, {**JSON, "Content-Length": "20"})
    error_of(lying, 413, "payload_too_large")


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"",
        b"   ",
        b'{"user_id": NaN}',
        b'{"a": Infinity}',
        b'{"user_id": "u", "user_id": "v", "email": "a@b"}',
        b"\xff\xfe{}",
        b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1),
        b'{"amount": ' + b"9" * 5000 + b"}",
    ],
    ids=[
        "broken",
        "empty",
        "blank",
        "nan",
        "infinity",
        "duplicate-key",
        "not-utf8",
        "deep",
        "huge-number",
    ],
)
def test_400_for_malformed_json(make_client: MakeClient, raw: bytes) -> None:
    error_of(post_raw(make_client(), raw, JSON), 400, "malformed_json")


def test_deep_but_allowed_nesting_reaches_validation(make_client: MakeClient) -> None:
    depth = MAX_JSON_DEPTH - 1
    nested = b'{"user_id": "u", "email": ' + b"[" * depth + b"]" * depth + b"}"
    body = error_of(post_raw(make_client(), nested, JSON), 422)
    assert body["field"] == "email"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([1, 2], None),
        ("text", None),
        (None, None),
        (5, None),
        ({"user_id": "u", "email": "a@b", "admin": True}, "admin"),
        ({"user_id": "u"}, "email"),
        ({"user_id": 5, "email": "a@b"}, "user_id"),
        ({"user_id": "u\u0000", "email": "a@b"}, "user_id"),
        ({"user_id": "u", "email": "no-at-sign"}, "email"),
    ],
)
def test_422_names_the_field(make_client: MakeClient, body: object, field: str | None) -> None:
    r = post_raw(make_client(), json.dumps(body).encode(), JSON)
    assert error_of(r, 422).get("field") == field


@pytest.mark.parametrize(
    ("amount", "status"),
    [
        (10.0, 422),
        (True, 422),
        ("10", 422),
        (0, 422),
        (-5, 422),
        (2**53, 422),
        (None, 422),
        (10, 201),
    ],
)
def test_money_is_json_integers_only(make_client: MakeClient, amount: object, status: int) -> None:
    client = make_client()
    client.post("/api/users", json={"user_id": "m", "email": "m@x"}, headers=PRODUCER)
    r = client.post(
        "/api/accounts/m/purchases",
        json={"amount": amount, "transaction_id": "t"},
        headers=PRODUCER,
    )
    assert r.status_code == status, r.text
    if status == 422:
        assert r.json()["field"] == "amount"
    raw = client.post(
        "/api/accounts/m/usage", content=b'{"amount": 1.0}', headers={**PRODUCER, **JSON}
    )
    assert error_of(raw, 422)["field"] == "amount"


def test_404_and_405_are_json(make_client: MakeClient) -> None:
    client = make_client()
    error_of(client.get("/api/nothing/here", headers=READER), 404, "not_found")
    error_of(client.get("/api/users", headers=READER), 405, "method_not_allowed")


def test_429_with_retry_after(make_client: MakeClient) -> None:
    client = make_client(rate_per_s=0.5, rate_burst=2)
    statuses = [client.get("/api/queue/status/x", headers=READER).status_code for _ in range(3)]
    assert statuses == [404, 404, 429]
    limited = client.get("/api/queue/status/x", headers=READER)
    error_of(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) >= 1
    # another key has its own bucket; the probes are not limited
    assert client.get("/api/queue/status/x", headers=PRODUCER).status_code == 404
    for _ in range(5):
        assert client.get("/health").status_code == 200


def test_buckets_live_in_redis_and_cover_every_api_route(
    make_client: MakeClient, redis: redis_py.Redis
) -> None:
    one, two = (make_client(rate_per_s=0.01, rate_burst=3) for _ in range(2))
    assert one.get("/api/queue/status/x", headers=READER).status_code == 404
    assert two.get("/api/accounts/u/balance", headers=READER).status_code == 404
    assert one.get("/api/no/such/route", headers=READER).status_code == 404
    error_of(two.get("/api/queue/status/x", headers=READER), 429)  # one bucket, two apps
    assert len(redis.keys("ledger:rl:*")) == 1


def test_429_changes_nothing(make_client: MakeClient, redis: redis_py.Redis) -> None:
    client = make_client(rate_per_s=0.01, rate_burst=1)
    assert (
        client.post(
            "/api/users", json={"user_id": "r1", "email": "a@b"}, headers=PRODUCER
        ).status_code
        == 201
    )
    r = client.post("/api/users", json={"user_id": "r2", "email": "a@b"}, headers=PRODUCER)
    error_of(r, 429)
    assert int(r.headers["Retry-After"]) >= 90  # 1 token at 0.01/s: 100 s
    unlimited = make_client(rate_per_s=0)
    dup = unlimited.post("/api/users", json={"user_id": "r2", "email": "a@b"}, headers=PRODUCER)
    assert dup.status_code == 201  # r2 was never registered by the refused request


def test_503_when_redis_is_down_answers_quickly(make_client: MakeClient) -> None:
    for rate in (200.0, 0.0):  # via the rate limiter, and via the route itself
        client = make_client(redis_url="redis://127.0.0.1:1/0", rate_per_s=rate)
        started = time.monotonic()
        r = client.post("/api/users", json={"user_id": "u", "email": "a@b"}, headers=PRODUCER)
        error_of(r, 503, "unavailable")
        assert r.headers["Retry-After"] == "1"
        assert time.monotonic() - started < 5


@pytest.mark.slow  # waits out MongoDB's server selection on every route
def test_503_when_mongo_is_down_answers_quickly(make_client: MakeClient) -> None:
    client = make_client(mongo_url="mongodb://127.0.0.1:1/?connectTimeoutMS=200")
    for path in ("balance", "credit-score", "events"):
        started = time.monotonic()
        r = client.get(f"/api/accounts/u/{path}", headers=READER)
        error_of(r, 503, "unavailable")
        assert time.monotonic() - started < 5, path
