"""Real ``ledger`` processes on a real 3-master Redis Cluster.

``ledger serve``, two ``ledger worker``, ``ledger project`` and ``ledger
scheduler`` run with ``REDIS_URL=redis+cluster://…``; traffic goes through the
HTTP API (registrations, purchases, uses, repeated keys, refusals, tasks, some
delayed). One worker is SIGKILLed while it holds tasks and a new one starts:
the dead worker's tasks are taken over (claim-idle) and every task completes,
its effect written once and run to completion by one live process. Then the
read models must match the log and ``ledger audit`` (a process, on the cluster
URL) must be clean, and every process stops cleanly on SIGTERM.
"""

from __future__ import annotations

import http.client
import json
import signal
import time
from collections import Counter
from typing import Any

import pytest
from pymongo.database import Database

from api.dev.deployment import Deployment
from api.dev.embedded import LOOPBACK, free_port
from streams import keys
from streams.connection import connect
from tests.helpers import eventually

from . import handlers
from .conftest import PARTITIONS, audit_report, log_tail

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PRODUCER, READER = "producer-key-0123456789", "reader-key-0123456789"
API_KEYS = f"{PRODUCER}:producer,{READER}:reader"
WORKER = [
    "worker",
    "--import",
    "tests.cluster.handlers",
    "--concurrency",
    "2",
    "--claim-idle-ms",
    "4000",  # above a whole round's work (up to 32 tasks of SLEEP_S each)
    "--backoff-ms",
    "50",
]
USERS = [f"proc-{i:02d}" for i in range(12)]
TASKS = 48
DELAYED = 8
SLEEP_S = 0.05


class Api:
    """A keep-alive HTTP client of the API under test."""

    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection(LOOPBACK, port, timeout=20)
        self.key = key

    def call(
        self, method: str, path: str, body: Any = None, *, key: str | None = None, **headers: str
    ) -> tuple[int, Any, dict[str, str]]:
        sent = {"Authorization": f"Bearer {key or self.key}", **headers}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=sent)
        resp = self.conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None, dict(resp.getheaders())

    def close(self) -> None:
        self.conn.close()


def check_running(deployment: Deployment) -> None:
    """Fail at once if a process the test did not kill has exited."""
    gone = [name for name in deployment.exited() if not deployment.kills[name]]
    if gone:
        pytest.fail(f"exited: {gone}\n{log_tail(deployment)}")


def wait_healthy(port: int, deployment: Deployment) -> None:
    def healthy() -> bool:
        check_running(deployment)
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=2)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    eventually(healthy, timeout=30, interval=0.1, ignoring=(OSError,), message="no API")


def pending_of(client: Any, pid: int) -> int:
    """Entries of the ``workers`` group pending for consumers of process ``pid``."""
    total = 0
    for p in keys.partitions(PARTITIONS):
        for level in keys.LEVELS_DESC:
            for row in client.xinfo_consumers(keys.stream(p, level), "workers"):
                if f":{pid}:" in row["name"].decode():
                    total += int(row["pending"])
    return total


@pytest.mark.timeout(90)
def test_ledger_processes_run_on_a_cluster(
    cluster_deployment: Deployment, mongo_db: Database[Any], redis_cluster: str
) -> None:
    started = time.monotonic()
    deployment = cluster_deployment
    deployment.env["LEDGER_API_KEYS"] = API_KEYS
    port = free_port()
    deployment.start("api", "serve", "--port", str(port), "--rate-per-s", "0")
    deployment.start("worker-0", *WORKER)
    deployment.start("worker-1", *WORKER)
    deployment.start("project", "project", "--batch", "200", "--claim-idle-ms", "3000")
    deployment.start("scheduler", "scheduler")
    wait_healthy(port, deployment)
    api = Api(port, PRODUCER)
    client = connect(redis_cluster)
    try:
        # -- ledger traffic -----------------------------------------------------------
        for user in USERS:
            status, body, _ = api.call(
                "POST", "/api/users", {"user_id": user, "email": f"{user}@example.com"}
            )
            assert status == 201, body
            status, body, _ = api.call(
                "POST",
                f"/api/accounts/{user}/purchases",
                {"amount": 100, "currency": "USD", "transaction_id": f"t-{user}"},
                **{"Idempotency-Key": f"buy-{user}"},
            )
            assert (status, body["balance"]) == (201, 100), body
            for n in range(3):
                status, body, _ = api.call(
                    "POST",
                    f"/api/accounts/{user}/usage",
                    {"amount": 10, "reason": f"use {n}"},
                    **{"Idempotency-Key": f"use-{user}-{n}"},
                )
                assert status == 201, body
            status, body, headers = api.call(  # a retried request: the same event
                "POST",
                f"/api/accounts/{user}/usage",
                {"amount": 10, "reason": "use 2"},
                **{"Idempotency-Key": f"use-{user}-2"},
            )
            assert (status, body["version"], headers.get("idempotent-replayed")) == (
                201,
                5,
                "true",
            ), (body, headers)
            status, body, _ = api.call(
                "POST", f"/api/accounts/{user}/usage", {"amount": 71, "reason": "too much"}
            )
            assert (status, body["error"]) == (409, "insufficient_credits"), body
        status, body, _ = api.call(
            "POST", "/api/users", {"user_id": "x", "email": "x@example.com"}, key=READER
        )
        assert status == 403, body

        # -- tasks, some delayed; one worker dies holding some ----------------------------
        task_ids: dict[str, str] = {}
        for i in range(TASKS + DELAYED):
            ref = f"task-{i:03d}"
            status, body, _ = api.call(
                "POST",
                "/api/queue/enqueue",
                {
                    "queue_name": "high_priority" if i % 3 == 0 else "default",
                    "task_type": handlers.TASK_TYPE,
                    "task_data": {"ref": ref, "sleep": SLEEP_S},
                    "delay": 1.5 if i >= TASKS else 0,
                },
                **{"Idempotency-Key": f"enqueue-{ref}"},
            )
            assert status == 202, body
            assert body["status"] == ("scheduled" if i >= TASKS else "queued")
            task_ids[ref] = body["task_id"]

        def busy() -> str:  # a worker running its tasks, with more of them pending
            started = Counter(pid for by_pid in handlers.runs(client).values() for pid in by_pid)
            for name in ("worker-0", "worker-1"):
                pid = deployment.procs[name].pid
                if started[pid] >= 2 and pending_of(client, pid) >= 3:
                    return name
            return ""

        killed = eventually(
            busy,
            timeout=20,
            interval=0.02,
            message=lambda: f"no worker held tasks\n{log_tail(deployment)}",
        )
        victim = deployment.procs[killed].pid
        deployment.kill(killed)  # SIGKILL mid-round: its tasks stay pending
        held = pending_of(client, victim)
        survivor = "worker-1" if killed == "worker-0" else "worker-0"
        deployment.start("worker-2", *WORKER)  # a new worker joins at run time

        def all_completed() -> bool:
            check_running(deployment)
            for ref, task_id in task_ids.items():
                status, body, _ = api.call("GET", f"/api/queue/status/{task_id}", key=READER)
                assert status == 200, body
                assert body["status"] == "completed", (ref, body.get("last_error"), body)
            return True

        eventually(
            all_completed,
            timeout=40,
            interval=0.3,
            message=lambda: f"tasks did not complete\n{log_tail(deployment)}",
        )

        # -- every task ran to completion once, in a live process ------------------------
        runs = handlers.runs(client)
        assert sorted(runs) == sorted(task_ids)
        live = {deployment.procs[n].pid for n in (survivor, "worker-2")}
        for ref, by_pid in runs.items():
            assert set(by_pid) <= live | {victim}, (ref, by_pid)
            finished = sum(n for pid, n in by_pid.items() if pid in live)
            if victim in by_pid:  # killed mid-handler (no effect), or done before the kill
                assert by_pid[victim] == 1 and finished <= 1, (ref, by_pid)
            else:
                assert finished == 1, (ref, by_pid)
        effects = Counter(d["ref"] for d in mongo_db[handlers.COLLECTION].find())
        assert effects == Counter(dict.fromkeys(task_ids, 1))
        attempts = {
            ref: api.call("GET", f"/api/queue/status/{task_id}", key=READER)[1]["attempts"]
            for ref, task_id in task_ids.items()
        }
        retaken = [ref for ref, n in attempts.items() if n > 1]
        assert retaken, "no task of the killed worker was taken over"
        assert all(by_pid.get(victim, 0) <= 1 for by_pid in runs.values())

        # -- the read models caught up and match the log -----------------------------------
        def projected() -> bool:
            status, body, _ = api.call("GET", "/api/projections", key=READER)
            assert status == 200, body
            assert [(p["pending"], p["lag"]) for p in body] == [(0, 0)] * len(body), body
            return True

        eventually(projected, timeout=30, interval=0.2, message="projections lag")
        balances = {d["_id"]: d for d in mongo_db.balances.find()}
        assert sorted(balances) == USERS
        for user in USERS:
            doc = balances[user]
            assert (doc["version"], doc["balance"], doc["purchased_total"], doc["used_total"]) == (
                5,
                70,
                100,
                30,
            ), doc
            status, body, _ = api.call(
                "GET", f"/api/accounts/{user}/balance?min_version=5", key=READER
            )
            assert (status, body["balance"]) == (200, 70), body
        assert mongo_db.events.count_documents({}) == 5 * len(USERS)
        # the workers recorded every ledger event once in its original collection
        assert mongo_db.users.count_documents({}) == len(USERS)
        assert mongo_db.credit_usage.count_documents({}) == 3 * len(USERS)

        report = audit_report(deployment)
        assert report["accounts"] == len(USERS), report
    finally:
        api.close()
        client.close()
    deployment.stop(timeout=20)  # SIGTERM: each process drains and exits 0
    codes = {n: p.returncode for n, p in deployment.procs.items()}
    # uvicorn (one process) ends a graceful shutdown by raising the signal it caught again
    assert codes.pop("api") in (0, -signal.SIGTERM), log_tail(deployment)
    assert codes == {
        killed: -signal.SIGKILL,
        survivor: 0,
        "worker-2": 0,
        "project": 0,
        "scheduler": 0,
    }, log_tail(deployment)
    print(
        f"\nprocesses on a cluster: {len(USERS)} accounts, {len(task_ids)} tasks "
        f"({DELAYED} delayed), {killed} killed holding {held} entries, "
        f"{len(retaken)} taken over, {time.monotonic() - started:.1f}s"
    )
