"""Ledger endpoints on real servers: appends, idempotency, batches, read models."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis as redis_py
from pymongo.database import Database
from starlette.testclient import TestClient

from projections.runner import project_until_idle

from .conftest import PARTITIONS, MakeClient, auth

PRODUCER = auth("producer")
ADMIN = auth("admin")
READER = auth("reader")


def register(client: TestClient, user: str, **headers: str) -> Any:
    return client.post(
        "/api/users",
        json={"user_id": user, "email": f"{user}@example.com"},
        headers={**PRODUCER, **headers},
    )


def buy(client: TestClient, user: str, amount: int, txn: str) -> Any:
    return client.post(
        f"/api/accounts/{user}/purchases",
        json={"amount": amount, "currency": "USD", "transaction_id": txn},
        headers=PRODUCER,
    )


def project(redis: redis_py.Redis, db: Database[Any]) -> None:
    project_until_idle(redis, PARTITIONS, db)


def test_register_purchase_use_adjust(make_client: MakeClient) -> None:
    client = make_client()
    created = register(client, "alice")
    assert created.status_code == 201
    assert created.json() == {"event_id": "alice:1", "user_id": "alice", "version": 1, "balance": 0}
    assert register(client, "alice").json()["error"] == "duplicate_user"
    bought = buy(client, "alice", 500, "pay-1")
    assert (bought.status_code, bought.json()["balance"], bought.json()["version"]) == (201, 500, 2)
    used = client.post(
        "/api/accounts/alice/usage", json={"amount": 120, "reason": "report"}, headers=PRODUCER
    )
    assert (used.status_code, used.json()["balance"]) == (201, 380)
    over = client.post("/api/accounts/alice/usage", json={"amount": 381}, headers=PRODUCER)
    assert over.status_code == 409
    assert over.json()["error"] == "insufficient_credits" and over.json()["balance"] == 380
    adjusted = client.post(
        "/api/accounts/alice/adjustments", json={"delta": -80, "reason": "fee"}, headers=ADMIN
    )
    assert (adjusted.status_code, adjusted.json()["balance"]) == (201, 300)
    too_far = client.post(
        "/api/accounts/alice/adjustments", json={"delta": -301, "reason": "fee"}, headers=ADMIN
    )
    assert too_far.status_code == 409 and too_far.json()["balance"] == 300


def test_unknown_account_and_path_user_rules(make_client: MakeClient) -> None:
    client = make_client()
    missing = client.post("/api/accounts/nobody/usage", json={"amount": 1}, headers=PRODUCER)
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_account"
    bad = client.post("/api/accounts/bad%20user/usage", json={"amount": 1}, headers=PRODUCER)
    assert bad.status_code == 422 and bad.json()["field"] == "user_id"
    register(client, "bob")
    both = client.post(
        "/api/accounts/bob/usage", json={"amount": 1, "user_id": "bob"}, headers=PRODUCER
    )
    assert both.status_code == 422 and both.json()["field"] == "user_id"


def test_idempotency_key_replays_the_first_response(make_client: MakeClient) -> None:
    client = make_client()
    register(client, "carol")
    buy(client, "carol", 100, "t-1")
    headers = {**PRODUCER, "Idempotency-Key": "spend-1"}
    first = client.post("/api/accounts/carol/usage", json={"amount": 30}, headers=headers)
    client.post("/api/accounts/carol/usage", json={"amount": 5}, headers=PRODUCER)
    again = client.post("/api/accounts/carol/usage", json={"amount": 30}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert (
        again.json()
        == first.json()
        == {"event_id": "carol:3", "user_id": "carol", "version": 3, "balance": 70}
    )
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    other = client.post("/api/accounts/carol/usage", json={"amount": 31}, headers=headers)
    assert other.status_code == 409 and other.json()["error"] == "idempotency_key_reused"
    same_txn = buy(client, "carol", 100, "t-1")
    assert same_txn.status_code == 201 and same_txn.json()["version"] == 2
    assert same_txn.headers["Idempotent-Replayed"] == "true"
    bad_key = client.post(
        "/api/accounts/carol/usage",
        json={"amount": 1},
        headers={**PRODUCER, "Idempotency-Key": "has space"},
    )
    assert bad_key.status_code == 422 and bad_key.json()["field"] == "Idempotency-Key"


def test_same_key_from_20_concurrent_clients_is_one_event(make_client: MakeClient) -> None:
    setup = make_client()
    register(setup, "dave")
    buy(setup, "dave", 1000, "t-d")
    clients = [make_client() for _ in range(20)]
    barrier = threading.Barrier(20)

    def spend(c: TestClient) -> tuple[int, dict[str, Any]]:
        barrier.wait()
        r = c.post(
            "/api/accounts/dave/usage",
            json={"amount": 7},
            headers={**PRODUCER, "Idempotency-Key": "the-one"},
        )
        return r.status_code, r.json()

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(spend, clients))
    assert {status for status, _ in results} == {201}
    assert {body["event_id"] for _, body in results} == {"dave:3"}
    assert {body["balance"] for _, body in results} == {993}
    state = setup.get("/api/queue/stats", headers=ADMIN)  # the app still answers
    assert state.status_code == 200


def test_50_concurrent_spends_never_overdraw(
    make_client: MakeClient, redis: redis_py.Redis, mongo_db: Database[Any]
) -> None:
    client = make_client()
    register(client, "erin")
    buy(client, "erin", 300, "t-e")
    barrier = threading.Barrier(50)

    def spend(i: int) -> int:
        barrier.wait()
        return client.post(
            "/api/accounts/erin/usage", json={"amount": 10, "reason": f"#{i}"}, headers=PRODUCER
        ).status_code

    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(spend, range(50)))
    assert statuses.count(201) == 30 and statuses.count(409) == 20
    project(redis, mongo_db)
    balance = client.get("/api/accounts/erin/balance", headers=READER).json()
    assert (balance["balance"], balance["used_total"], balance["version"]) == (0, 300, 32)


def test_batch_mixes_results_per_item(make_client: MakeClient) -> None:
    client = make_client()
    events = [
        {"kind": "register_user", "user_id": "fay", "email": "fay@example.com"},
        {"kind": "purchase", "user_id": "fay", "amount": 50, "transaction_id": "b-1"},
        {"kind": "use", "user_id": "fay", "amount": 80},
        {"kind": "use", "user_id": "fay", "amount": 20, "idempotency_key": "k1"},
        {"kind": "adjust", "user_id": "fay", "delta": 5, "reason": "gift"},
        {"kind": "use", "user_id": "fay", "amount": 1.5},
        {"kind": "teleport", "user_id": "fay"},
        "not an object",
        {"kind": "use", "user_id": "fay", "amount": 20, "idempotency_key": "k1"},
    ]
    r = client.post("/api/events:batch", json={"events": events}, headers=PRODUCER)
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["status"] for x in results] == [201, 201, 409, 201, 403, 422, 422, 422, 201]
    assert results[2]["error"] == "insufficient_credits" and results[2]["balance"] == 50
    assert results[5]["field"] == "amount" and results[6]["field"] == "kind"
    assert results[3]["balance"] == 30 and results[8]["replayed"] is True
    assert results[8]["event_id"] == results[3]["event_id"]
    assert (r.json()["accepted"], r.json()["refused"]) == (4, 5)
    as_admin = client.post("/api/events:batch", json={"events": [events[4]]}, headers=ADMIN)
    assert as_admin.json()["results"][0]["balance"] == 35


def test_batch_bounds(make_client: MakeClient) -> None:
    client = make_client()
    for body, field in (
        ({"events": []}, "events"),
        ({"events": {}}, "events"),
        ({}, "events"),
        ({"events": [], "more": 1}, "more"),
    ):
        r = client.post("/api/events:batch", json=body, headers=PRODUCER)
        assert r.status_code == 422 and r.json()["field"] == field, body
    many = [{"kind": "register_user", "user_id": f"u{i}", "email": "a@b"} for i in range(1001)]
    r = client.post("/api/events:batch", json={"events": many}, headers=PRODUCER)
    assert r.status_code == 422 and "1000" in r.json()["message"]
    ok = client.post("/api/events:batch", json={"events": many[:1000]}, headers=PRODUCER)
    assert ok.status_code == 200 and ok.json()["accepted"] == 1000


def test_reads_come_from_the_projections(
    make_client: MakeClient, redis: redis_py.Redis, mongo_db: Database[Any]
) -> None:
    client = make_client()
    register(client, "gus")
    buy(client, "gus", 400, "t-g")
    client.post("/api/accounts/gus/usage", json={"amount": 100}, headers=PRODUCER)
    before = client.get("/api/accounts/gus/balance", headers=READER)
    assert before.status_code == 409 and before.json()["error"] == "not_yet_projected"
    assert before.json()["current_version"] == 3
    project(redis, mongo_db)
    bal = client.get("/api/accounts/gus/balance", headers=READER)
    assert bal.status_code == 200
    body = bal.json()
    assert (body["balance"], body["version"], body["purchased_total"], body["used_total"]) == (
        300,
        3,
        400,
        100,
    )
    assert body["updated_at"].endswith("Z")
    score = client.get("/api/accounts/gus/credit-score", headers=READER).json()
    assert score["version"] == 3 and isinstance(score["score"], int)
    page = client.get("/api/accounts/gus/events?limit=2", headers=READER).json()
    assert [e["version"] for e in page["events"]] == [1, 2]
    assert page["events"][1]["kind"] == "credits_purchased"
    assert page["events"][1]["balance_after"] == 400 and page["next_after_version"] == 2
    rest = client.get("/api/accounts/gus/events?after_version=2&limit=2", headers=READER).json()
    assert [e["event_id"] for e in rest["events"]] == ["gus:3"]
    assert rest["next_after_version"] is None
    for path in ("balance", "credit-score", "events"):
        r = client.get(f"/api/accounts/nobody/{path}", headers=READER)
        assert r.status_code == 404 and r.json()["error"] == "unknown_account", path
    for query in ("limit=0", "limit=1001", "after_version=-1", "limit=x"):
        r = client.get(f"/api/accounts/gus/events?{query}", headers=READER)
        assert r.status_code == 422, query


def test_min_version_waits_for_the_projector(
    make_client: MakeClient, redis: redis_py.Redis, mongo_db: Database[Any]
) -> None:
    client = make_client()
    register(client, "hal")
    project(redis, mongo_db)
    version = buy(client, "hal", 70, "t-h").json()["version"]
    answers: list[Any] = []
    reader = threading.Thread(
        target=lambda: answers.append(
            client.get(
                f"/api/accounts/hal/balance?min_version={version}&wait_ms=5000", headers=READER
            )
        )
    )
    reader.start()  # it waits: nothing projects version 2 until the line below
    project(redis, mongo_db)
    reader.join()
    r = answers[0]
    assert r.status_code == 200 and (r.json()["version"], r.json()["balance"]) == (2, 70)
    ahead = client.get("/api/accounts/hal/balance?min_version=9", headers=READER)
    assert ahead.status_code == 409 and ahead.json()["version"] == 2
    assert ahead.json()["current_version"] == 2
    buy(client, "hal", 1, "t-h2")
    late = client.get("/api/accounts/hal/balance?min_version=3&wait_ms=50", headers=READER)
    assert late.status_code == 409 and late.json()["error"] == "not_yet_projected"
    for query in ("min_version=0", "wait_ms=5001", "min_version=1.5"):
        assert client.get(f"/api/accounts/hal/balance?{query}", headers=READER).status_code == 422
