"""Credit hold endpoints on real servers: reserve, capture, release, list, hostile input."""

from __future__ import annotations

from typing import Any

import pytest
import redis as redis_py
from pymongo.database import Database
from starlette.testclient import TestClient

from projections.runner import project_until_idle

from .conftest import PARTITIONS, MakeClient, auth

PRODUCER = auth("producer")
READER = auth("reader")


def funded(client: TestClient, user: str, credits: int = 100) -> None:
    r = client.post(
        "/api/users", json={"user_id": user, "email": f"{user}@example.com"}, headers=PRODUCER
    )
    assert r.status_code == 201, r.text
    r = client.post(
        f"/api/accounts/{user}/purchases",
        json={"amount": credits, "transaction_id": f"tx-{user}"},
        headers=PRODUCER,
    )
    assert r.status_code == 201, r.text


def hold(client: TestClient, user: str, body: Any, **headers: str) -> Any:
    return client.post(f"/api/accounts/{user}/holds", json=body, headers={**PRODUCER, **headers})


def test_hold_capture_release_and_list(
    make_client: MakeClient, redis: redis_py.Redis, mongo_db: Database[Any]
) -> None:
    client = make_client()
    funded(client, "ann")
    made = hold(client, "ann", {"amount": 60, "reason": "job", "expires_in_s": 300})
    assert made.status_code == 201, made.text
    assert made.json() == {
        "event_id": "ann:3",
        "user_id": "ann",
        "version": 3,
        "balance": 100,
        "hold_id": "ann:h1",
        "held": 60,
        "available": 40,
    }
    over = client.post("/api/accounts/ann/usage", json={"amount": 41}, headers=PRODUCER)
    assert over.status_code == 409
    assert (over.json()["error"], over.json()["balance"], over.json()["available"]) == (
        "insufficient_credits",
        100,
        40,
    )
    too_much = hold(client, "ann", {"amount": 41, "expires_in_s": 60})
    assert (too_much.status_code, too_much.json()["error"]) == (409, "insufficient_credits")
    hold(client, "ann", {"amount": 10, "expires_in_s": 60})
    listed = client.get("/api/accounts/ann/holds", headers=READER)
    assert listed.status_code == 200
    body = listed.json()
    assert (body["balance"], body["held"], body["available"]) == (100, 70, 30)
    assert [(h["hold_id"], h["amount"], h["reason"]) for h in body["holds"]] == [
        ("ann:h1", 60, "job"),
        ("ann:h2", 10, ""),
    ]
    assert body["holds"][0]["expires_at"].endswith("Z")
    cap = client.post(
        "/api/accounts/ann/holds/ann:h1/capture", json={"amount": 45}, headers=PRODUCER
    )
    assert cap.status_code == 201, cap.text
    assert (cap.json()["balance"], cap.json()["held"], cap.json()["available"]) == (55, 10, 45)
    rel = client.post("/api/accounts/ann/holds/ann:h2/release", headers=PRODUCER)
    assert rel.status_code == 201, rel.text
    assert (rel.json()["held"], rel.json()["available"]) == (0, 55)
    for path in ("ann:h1/capture", "ann:h2/release", "ann:h1/release"):
        again = client.post(f"/api/accounts/ann/holds/{path}", headers=PRODUCER)
        assert (again.status_code, again.json()["error"]) == (409, "hold_not_open")
    project_until_idle(redis, PARTITIONS, mongo_db)
    shown = client.get("/api/accounts/ann/balance", headers=READER).json()
    assert (shown["balance"], shown["held"], shown["available"], shown["version"]) == (
        55,
        0,
        55,
        6,
    )
    doc = mongo_db["balances"].find_one({"_id": "ann"})
    assert doc is not None and (doc["held"], doc["available"]) == (0, 55)
    assert client.get("/api/accounts/ann/holds", headers=READER).json()["holds"] == []
    page = client.get("/api/accounts/ann/events?after_version=2", headers=READER).json()
    assert [
        (e["kind"], e["amount"], e["held_total"], e["hold_amount"]) for e in page["events"]
    ] == [
        ("credits_held", 0, 60, 60),
        ("credits_held", 0, 70, 10),
        ("hold_captured", -45, 10, 60),
        ("hold_released", 0, 0, 10),
    ]
    assert page["events"][0]["ref"] == "ann:h1" and page["events"][0]["hold_expires_at_ms"] > 0


def test_repeats_by_idempotency_key_return_the_first_response(make_client: MakeClient) -> None:
    client = make_client()
    funded(client, "bo")
    body = {"amount": 5, "expires_in_s": 60}
    first = hold(client, "bo", body, **{"Idempotency-Key": "h-1"})
    again = hold(client, "bo", body, **{"Idempotency-Key": "h-1"})
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    path = f"/api/accounts/bo/holds/{first.json()['hold_id']}/capture"
    cap = client.post(path, json={}, headers={**PRODUCER, "Idempotency-Key": "c-1"})
    rep = client.post(path, json={}, headers={**PRODUCER, "Idempotency-Key": "c-1"})
    assert cap.status_code == rep.status_code == 201
    assert rep.json() == cap.json() and rep.headers["Idempotent-Replayed"] == "true"
    third = client.post(path, json={}, headers={**PRODUCER, "Idempotency-Key": "c-2"})
    assert (third.status_code, third.json()["error"]) == (409, "hold_not_open")


def test_unknown_holds_and_another_accounts_hold_are_404(make_client: MakeClient) -> None:
    client = make_client()
    funded(client, "cy")
    funded(client, "di")
    theirs = hold(client, "di", {"amount": 5, "expires_in_s": 60}).json()["hold_id"]
    for hold_id in ("cy:h1", "cy:h7", theirs):
        for action in ("capture", "release"):
            r = client.post(f"/api/accounts/cy/holds/{hold_id}/{action}", headers=PRODUCER)
            assert (r.status_code, r.json()["error"]) == (404, "unknown_hold"), (hold_id, r.text)
    r = client.post("/api/accounts/nobody/holds/nobody:h1/release", headers=PRODUCER)
    assert (r.status_code, r.json()["error"]) == (404, "unknown_account")
    assert client.get("/api/accounts/nobody/holds", headers=READER).status_code == 404
    assert hold(client, "nobody", {"amount": 1, "expires_in_s": 1}).status_code == 404


@pytest.mark.parametrize(
    "body, field",
    [
        ({"amount": 0, "expires_in_s": 60}, "amount"),
        ({"amount": -1, "expires_in_s": 60}, "amount"),
        ({"amount": 2**53, "expires_in_s": 60}, "amount"),
        ({"amount": 10**30, "expires_in_s": 60}, "amount"),
        ({"amount": 1.5, "expires_in_s": 60}, "amount"),
        ({"amount": 5.0, "expires_in_s": 60}, "amount"),
        ({"amount": "5", "expires_in_s": 60}, "amount"),
        ({"amount": True, "expires_in_s": 60}, "amount"),
        ({"amount": None, "expires_in_s": 60}, "amount"),
        ({"expires_in_s": 60}, "amount"),
        ({"amount": 5}, "expires_in_s"),
        ({"amount": 5, "expires_in_s": 0}, "expires_in_s"),
        ({"amount": 5, "expires_in_s": -5}, "expires_in_s"),
        ({"amount": 5, "expires_in_s": 1.5}, "expires_in_s"),
        ({"amount": 5, "expires_in_s": "60"}, "expires_in_s"),
        ({"amount": 5, "expires_in_s": 10**20}, "expires_in_s"),
        ({"amount": 5, "expires_in_s": 604801}, "expires_in_s"),  # beyond the configured max
        ({"amount": 5, "expires_in_s": 60, "reason": "x" * 501}, "reason"),
        ({"amount": 5, "expires_in_s": 60, "reason": 7}, "reason"),
        ({"amount": 5, "expires_in_s": 60, "reason": "a\x00b"}, "reason"),
        ({"amount": 5, "expires_in_s": 60, "$set": {"held": 0}}, "$set"),
        ({"amount": 5, "expires_in_s": 60, "user_id": "other"}, "user_id"),
        ({"amount": 5, "expires_in_s": 60, "hold_id": "x:h1"}, "hold_id"),
    ],
)
def test_hostile_hold_bodies_are_422_naming_the_field(
    make_client: MakeClient, body: dict[str, Any], field: str
) -> None:
    client = make_client()
    funded(client, "ed")
    r = hold(client, "ed", body)
    assert (r.status_code, r.json().get("field")) == (422, field), r.text
    assert client.get("/api/accounts/ed/holds", headers=READER).json()["held"] == 0


@pytest.mark.parametrize(
    "body, field",
    [
        ({"amount": 0}, "amount"),
        ({"amount": -3}, "amount"),
        ({"amount": 6}, "amount"),  # more than held
        ({"amount": 2.0}, "amount"),
        ({"amount": "2"}, "amount"),
        ({"amount": 2**64}, "amount"),
        ({"$inc": {"balance": 1}}, "$inc"),
        ({"hold_id": "ed:h2"}, "hold_id"),
    ],
)
def test_hostile_capture_bodies(make_client: MakeClient, body: dict[str, Any], field: str) -> None:
    client = make_client()
    funded(client, "fi")
    hold_id = hold(client, "fi", {"amount": 5, "expires_in_s": 60}).json()["hold_id"]
    r = client.post(f"/api/accounts/fi/holds/{hold_id}/capture", json=body, headers=PRODUCER)
    assert (r.status_code, r.json().get("field")) == (422, field), r.text
    assert client.get("/api/accounts/fi/holds", headers=READER).json()["held"] == 5


@pytest.mark.parametrize("hold_id", ["h1", "fi:h0", "fi:h01", "fi:x", "$where", "fi:h1%24"])
def test_malformed_hold_ids_are_422(make_client: MakeClient, hold_id: str) -> None:
    client = make_client()
    r = client.post(f"/api/accounts/fi/holds/{hold_id}/release", headers=PRODUCER)
    assert (r.status_code, r.json().get("field")) == (422, "hold_id"), r.text


def test_roles_and_limits(make_client: MakeClient) -> None:
    client = make_client(max_open_holds=1)
    funded(client, "gus")
    r = client.post(
        "/api/accounts/gus/holds", json={"amount": 1, "expires_in_s": 60}, headers=READER
    )
    assert r.status_code == 403
    assert hold(client, "gus", {"amount": 1, "expires_in_s": 60}).status_code == 201
    r = hold(client, "gus", {"amount": 1, "expires_in_s": 60})
    assert (r.status_code, r.json()["error"]) == (409, "too_many_holds")
    r = client.post("/api/events:batch", headers=PRODUCER, json={"events": [
        {"kind": "release", "user_id": "gus", "hold_id": "gus:h1"},
        {"kind": "hold", "user_id": "gus", "amount": 2, "expires_in_s": 60},
        {"kind": "capture", "user_id": "gus", "hold_id": "gus:h2", "amount": 1},
    ]})  # fmt: skip
    assert [x["status"] for x in r.json()["results"]] == [201, 201, 201]
    assert r.json()["results"][2]["hold_id"] == "gus:h2"
