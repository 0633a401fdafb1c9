"""The Mongo-wire server stopped for a while under traffic: appends go on (201),
read-model reads answer 503, the running projector backs off without
dead-lettering anything, and once the server is back it catches up by itself."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import redis as redis_py

from api.dev.deployment import Deployment
from api.dev.embedded import EmbeddedMongo, free_port
from ledger.accounts import fold
from projections.audit import audit
from projections.store import connect
from streams import QueueManager, StreamsConfig
from streams.connection import connect as redis_connect
from tests.helpers import eventually
from tests.streamlog import account_histories

from .cluster import ROOT
from .conftest import PARTITIONS

USERS = [f"m{i}" for i in range(6)]


def call(
    url: str, method: str = "GET", body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def caught_up(db: Any, qm: QueueManager) -> bool:
    for u in USERS:
        state, doc = qm.balance(u), db.balances.find_one({"_id": u})
        if state is None or doc is None or doc["version"] != state["version"]:
            return False
    return True


def test_projectors_wait_out_a_mongo_outage_and_the_api_answers_503(
    tmp_path: Path, redis: redis_py.Redis, redis_url: str, private_mongo: EmbeddedMongo
) -> None:
    deployment = Deployment(
        redis_url,
        private_mongo.url,
        mongo_db="outage",
        partitions=PARTITIONS,
        log_level="WARNING",
        env={"LEDGER_API_KEYS": ""},
        log_dir=tmp_path,
        cwd=ROOT,
    )
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    procs = [
        deployment.start("api", "serve", "--port", str(port), "--rate-per-s", "0"),
        deployment.start("project", "project", "--batch", "100"),
    ]
    qm = QueueManager(
        config=StreamsConfig(redis_url=redis_url, partitions=PARTITIONS),
        client=redis_connect(redis_url),
    )
    mongo = connect(private_mongo.url)
    db = mongo["outage"]
    try:
        eventually(
            lambda: call(api + "/health")[0] == 200,
            interval=0.1,
            ignoring=(OSError,),
            message="the API did not come up",
        )

        def append_round(tag: str) -> None:
            for u in USERS:
                status, body = call(
                    f"{api}/api/accounts/{u}/purchases",
                    "POST",
                    {"amount": 10, "currency": "USD", "transaction_id": f"{tag}-{u}"},
                )
                assert status == 201, body

        for u in USERS:
            assert call(f"{api}/api/users", "POST", {"user_id": u, "email": f"{u}@x.io"})[0] == 201
        append_round("before")
        eventually(
            lambda: caught_up(db, qm),
            timeout=60,
            interval=0.1,
            message="the projector never caught up before the outage",
        )
        assert call(f"{api}/api/accounts/m0/balance")[0] == 200

        private_mongo.stop()
        for i in range(3):  # appends go on while the read models are unreachable
            append_round(f"during-{i}")
        status, body = call(f"{api}/api/accounts/m0/balance")
        assert status == 503, body
        assert body["error"] == "unavailable"
        time.sleep(1.0)  # the projector is retrying against a dead server meanwhile
        assert all(p.poll() is None for p in procs), "a process died with MongoDB"

        private_mongo.start()  # same port and data
        append_round("after")
        eventually(
            lambda: caught_up(db, qm),
            timeout=60,
            interval=0.1,
            message="the projector did not catch up after the outage",
        )
        status, body = call(f"{api}/api/accounts/m0/balance")
        assert status == 200 and body["balance"] == 50, body
        histories = account_histories(qm.redis, PARTITIONS)
        for u in USERS:
            account = fold(histories[u])
            assert account is not None and account.totals.balance == 50
            doc = db.balances.find_one({"_id": u})
            assert doc is not None and doc["balance"] == 50 and doc["version"] == 6
        assert qm.dead_letters() == [], "an outage must not dead-letter good events"
        report = audit(qm.redis, PARTITIONS, db)
        assert report.ok and not report.mismatches and not report.lagging, report.mismatches
    finally:
        for name in list(deployment.procs):
            deployment.kill(name)
        deployment.close()
        qm.close()
        mongo.close()
