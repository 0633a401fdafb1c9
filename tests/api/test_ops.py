"""Health and readiness; dead letters and projections over HTTP, with roles."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import pytest
from redis.typing import KeyT, StreamIdT
from starlette.testclient import TestClient

from api.http.state import AppState
from projections.runner import project_until_idle, projector
from projections.scores import CreditScores
from streams import RetryPolicy, keys
from streams.replies import entries as stream_entries

from .conftest import MakeClient, auth


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


def state_of(client: TestClient) -> AppState:
    state: AppState = client.app.state.ledger  # type: ignore[attr-defined]
    return state


def make_dead_letters(client: TestClient, n: int) -> list[str]:
    """Enqueue ``n`` tasks nobody handles and run a worker that gives up at once."""
    qm = state_of(client).qm
    task_ids = [qm.enqueue("default", "nobody_handles_this", {"n": i}) for i in range(n)]
    qm.worker(retry=RetryPolicy(max_attempts=1)).run_until_idle()
    return task_ids


def test_dlq_lists_newest_dead_letters_with_their_fields(make_client: MakeClient) -> None:
    client = make_client()
    assert client.get("/api/dlq", headers=auth("admin")).json() == []
    task_ids = make_dead_letters(client, 3)
    response = client.get("/api/dlq", headers=auth("admin"))
    assert response.status_code == 200
    letters = response.json()
    assert sorted(d["task_id"] for d in letters) == sorted(task_ids)
    first = letters[0]
    assert set(first) == {
        "id",
        "stream",
        "original_id",
        "group",
        "error",
        "attempts",
        "at",
        "queue_name",
        "kind",
        "task_id",
        "task_type",
        "user_id",
    }
    assert first["id"].startswith("p") and first["stream"].startswith("ledger:{p")
    assert (first["group"], first["attempts"], first["queue_name"]) == ("workers", 1, "default")
    assert (first["kind"], first["task_type"], first["user_id"]) == (
        "task",
        "nobody_handles_this",
        None,
    )
    assert "no handler registered" in first["error"]
    assert first["at"].endswith("Z")
    ats = [d["at"] for d in letters]
    assert ats == sorted(ats, reverse=True)  # newest first
    limited = client.get("/api/dlq?limit=2", headers=auth("admin")).json()
    assert len(limited) == 2 and limited == letters[:2]


@pytest.mark.parametrize("limit", ["0", "501", "-1", "ten", "1.5"])
def test_dlq_limit_is_bounded(make_client: MakeClient, limit: str) -> None:
    response = make_client().get(f"/api/dlq?limit={limit}", headers=auth("admin"))
    assert response.status_code == 422
    assert response.json()["field"] == "limit"


def test_requeue_puts_the_task_back_and_removes_the_dead_letter(make_client: MakeClient) -> None:
    client = make_client()
    [task_id] = make_dead_letters(client, 1)
    qm = state_of(client).qm
    assert qm.get_task_status(task_id)["status"] == "failed"  # type: ignore[index]
    [dead] = client.get("/api/dlq", headers=auth("admin")).json()
    response = client.post(f"/api/dlq/{dead['id']}/requeue", headers=auth("admin"))
    assert response.status_code == 200
    body = response.json()
    assert body["requeued"] == dead["id"]
    assert body["entry_id"] != dead["original_id"]
    assert state_of(client).redis.xrange(dead["stream"], body["entry_id"], body["entry_id"])
    assert qm.get_task_status(task_id)["status"] == "queued"  # type: ignore[index]
    assert client.get("/api/dlq", headers=auth("admin")).json() == []
    again = client.post(f"/api/dlq/{dead['id']}/requeue", headers=auth("admin"))
    assert again.status_code == 404
    assert again.json()["error"] == "unknown_dead_letter"


@pytest.mark.parametrize("entry_id", ["p0:1-0", "p99:1-0", "nonsense", "p0:abc"])
def test_requeue_of_an_unknown_dead_letter_is_a_json_404(
    make_client: MakeClient, entry_id: str
) -> None:
    response = make_client().post(f"/api/dlq/{entry_id}/requeue", headers=auth("admin"))
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_dead_letter"


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/api/dlq"), ("POST", "/api/dlq/p0:1-0/requeue")]
)
def test_dead_letters_need_the_admin_role(make_client: MakeClient, method: str, path: str) -> None:
    client = make_client()
    assert client.request(method, path).status_code == 401
    assert (
        client.request(method, path, headers={"Authorization": "Bearer not-a-key"}).status_code
        == 401
    )
    for role in ("reader", "producer"):
        response = client.request(method, path, headers=auth(role))
        assert response.status_code == 403 and response.json()["error"] == "forbidden"


def test_requeue_by_a_reader_changes_nothing(make_client: MakeClient) -> None:
    client = make_client()
    make_dead_letters(client, 1)
    [dead] = client.get("/api/dlq", headers=auth("admin")).json()
    assert client.post(f"/api/dlq/{dead['id']}/requeue", headers=auth("reader")).status_code == 403
    assert client.get("/api/dlq", headers=auth("admin")).json() == [dead]


def test_without_keys_dead_letters_need_no_auth(make_client: MakeClient) -> None:
    client = make_client(api_keys={})
    make_dead_letters(client, 1)
    [dead] = client.get("/api/dlq").json()
    assert client.post(f"/api/dlq/{dead['id']}/requeue").status_code == 200


def projections_by_name(client: TestClient) -> dict[str, dict[str, object]]:
    response = client.get("/api/projections", headers=auth("reader"))
    assert response.status_code == 200
    return {p["projection"]: p for p in response.json()}


def test_projections_report_lag_until_projected(make_client: MakeClient) -> None:
    client = make_client()
    state = state_of(client)
    before = projections_by_name(client)
    assert set(before) == {"balances", "credit_scores", "events"}
    for p in before.values():
        assert (p["group"], p["pending"], p["lag"], p["lag_ms"]) == (
            f"proj:{p['projection']}",
            0,
            0,
            0,
        )
        assert p["oldest_unacked_at"] is None and p["checkpoint_at"] is None
    state.qm.register_user("ann", "ann@example.com")
    state.qm.purchase("ann", 50, transaction_id="t-1")
    partition = keys.partition_of("ann", 4)
    first_id = stream_entries(
        state.redis, keys.stream(partition, keys.LEVEL_BY_NAME["normal"]), count=1
    )[0][0].decode()
    lagging = projections_by_name(client)
    for proj in lagging.values():
        assert (proj["pending"], proj["lag"]) == (0, 2)
        # lag_ms is measured from the oldest entry not acknowledged: the first event
        first_ms = int(first_id.split("-")[0])
        assert proj["oldest_unacked_at"] is not None
        at = datetime.fromisoformat(str(proj["oldest_unacked_at"]).replace("Z", "+00:00"))
        assert int(at.timestamp() * 1000) == first_ms
        assert isinstance(proj["lag_ms"], int) and proj["lag_ms"] >= 0
    assert state.db is not None
    assert project_until_idle(state.redis, 4, state.db) == 6  # 2 events x 3 projections
    after = projections_by_name(client)
    for proj in after.values():
        assert (proj["pending"], proj["lag"], proj["lag_ms"]) == (0, 0, 0)
        assert proj["oldest_unacked_at"] is None
        assert str(proj["checkpoint_at"]).endswith("Z")


def test_projections_count_delivered_but_unacknowledged_entries_as_pending(
    make_client: MakeClient,
) -> None:
    client = make_client()
    state = state_of(client)
    state.qm.register_user("bob", "bob@example.com")
    state.qm.register_user("cy", "cy@example.com")
    assert state.db is not None
    # a projector consumer that reads and dies before acknowledging: its entries stay pending
    projector(state.redis, 4, state.db, CreditScores())  # creates the group
    normal = [keys.stream(p, keys.LEVEL_BY_NAME["normal"]) for p in keys.partitions(4)]
    read: list[list[Any]] = []
    for stream in normal:  # one stream a call: on a Cluster the partitions sit in other slots
        streams: dict[KeyT, StreamIdT] = {stream: ">"}
        # a RESP2 client (the default): a list of [stream, entries] pairs
        read += cast(
            list[list[Any]], state.redis.xreadgroup("proj:credit_scores", "crashed", streams)
        )
    ids = sorted(entry_id.decode() for _, entries in read for entry_id, _ in entries)
    assert len(ids) == 2
    scores = projections_by_name(client)["credit_scores"]
    assert (scores["pending"], scores["lag"]) == (2, 0)
    oldest = min(int(i.split("-")[0]) for i in ids)
    at = datetime.fromisoformat(str(scores["oldest_unacked_at"]).replace("Z", "+00:00"))
    assert int(at.timestamp() * 1000) == oldest
    assert projections_by_name(client)["balances"]["lag"] == 2


def test_projections_need_a_key_but_any_role(make_client: MakeClient) -> None:
    client = make_client()
    assert client.get("/api/projections").status_code == 401
    for role in ("reader", "producer", "admin"):
        assert client.get("/api/projections", headers=auth(role)).status_code == 200


def test_overview_has_queues_projections_and_dead_letters(make_client: MakeClient) -> None:
    client = make_client()
    assert client.get("/api/ops/overview", headers=auth("reader")).status_code == 403
    make_dead_letters(client, 2)
    body = client.get("/api/ops/overview", headers=auth("admin")).json()
    assert set(body) == {"at", "queues", "projections", "dead_letters", "schedules", "waiting"}
    assert (body["schedules"], body["waiting"]) == ([], [])
    assert set(body["queues"]) == {"default", "high_priority", "low_priority"}
    assert body["queues"]["default"]["dead"] == 2
    assert body["dead_letters"]["count"] == 2 and len(body["dead_letters"]["newest"]) == 2
    assert [p["projection"] for p in body["projections"]] == ["balances", "credit_scores", "events"]
