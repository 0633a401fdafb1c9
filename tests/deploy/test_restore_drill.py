"""The restore drill of docs/operations.md, with real processes and small data.

A deployment (``ledger serve``, ``ledger worker``, ``ledger project``, ``ledger
scheduler``) on its own redis-server (AOF, ``appendfsync always``) takes credit traffic
over HTTP until the read models have caught up. Then: stop the processes, copy the AOF
directory of the running server (rewrites paused, as the runbook says), stop Redis, start
a fresh redis-server on the copy, ``ledger replay`` into an empty
database, ``ledger audit`` clean. The rebuilt read models equal the lost ones, the
restored Redis still knows every account, idempotency record and transaction id, and a
new deployment carries on from there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pymongo
import pytest
import redis as redis_py
from pymongo.database import Database

from api.dev.deployment import Deployment
from api.dev.embedded import EmbeddedRedis, free_port
from api.dev.loadgen import as_batch_item, credit_traffic, registrations, user_ids
from ledger.commands import Purchase
from streams import QueueManager, StreamsConfig
from tests.helpers import eventually

from .tools import LOOPBACK, ROOT

pytestmark = pytest.mark.slow

PARTITIONS = 4
USERS = user_ids(25, prefix="drill")
READ_MODELS = ("balances", "credit_scores", "events")


def start_ledger(group: Deployment, port: int) -> str:
    group.start("api", "serve", "--port", str(port))
    group.start("worker", "worker")
    group.start("project", "project")
    group.start("scheduler", "scheduler")
    base = f"http://{LOOPBACK}:{port}"

    def up() -> bool:
        assert not group.exited(), f"exited: {group.exited()}"
        return httpx.get(f"{base}/health", timeout=2).status_code == 200

    eventually(up, timeout=30, ignoring=(httpx.TransportError,), message="API up")
    return base


def backup_aof(url: str, source: Path, target: Path) -> None:
    """Copy a running server's AOF directory: no rewrite may start or run meanwhile (a
    rewrite replaces the files being copied)."""
    with redis_py.Redis.from_url(url) as client:
        setting = client.config_get("auto-aof-rewrite-percentage")["auto-aof-rewrite-percentage"]
        client.config_set("auto-aof-rewrite-percentage", 0)
        try:
            eventually(
                lambda: client.info("persistence")["aof_rewrite_in_progress"] == 0,
                timeout=30,
                message="no AOF rewrite in progress",
            )
            shutil.copytree(source, target)
        finally:
            client.config_set("auto-aof-rewrite-percentage", setting)


def redis_versions(url: str) -> dict[str, int]:
    """Each account's version in the Redis account state (the authoritative one)."""
    qm = QueueManager(config=StreamsConfig(redis_url=url, partitions=PARTITIONS))
    try:
        versions = {}
        for user in USERS:
            state = qm.balance(user)
            assert state is not None, user
            versions[user] = int(state["version"])
        return versions
    finally:
        qm.close()


def caught_up(db: Database[Any], expected: dict[str, int]) -> bool:
    """Every read model holds every account at its version, and the archive every event."""
    for name in ("balances", "credit_scores"):
        docs = {d["_id"]: d["version"] for d in db[name].find({}, {"version": 1})}
        assert docs == expected, f"{name}: {len(docs)} of {len(expected)} at their version"
    archived = db["events"].count_documents({})
    assert archived == sum(expected.values()), f"{archived} events archived"
    return True


def documents(db: Database[Any], name: str) -> list[dict[str, Any]]:
    return sorted(db[name].find({}), key=lambda d: str(d["_id"]))


def ledger(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_restore_from_aof_copy_then_replay_into_an_empty_database(
    tmp_path: Path,
    fresh_redis_server: Callable[..., EmbeddedRedis],
    mongo_url: str,
    mongo_client: pymongo.MongoClient[dict[str, Any]],
    mongo_db: Database[Any],
) -> None:
    live = fresh_redis_server(appendfsync="always")

    def deployment(redis_url: str, db: str) -> Deployment:
        return Deployment(
            redis_url,
            mongo_url,
            mongo_db=db,
            partitions=PARTITIONS,
            log_level="WARNING",
            log_dir=tmp_path,
            cwd=ROOT,
        )

    # 1. a deployment under credit traffic, until every read model has caught up
    with deployment(live.url, mongo_db.name) as group:
        base = start_ledger(group, free_port())
        commands = [*registrations(USERS), *credit_traffic(USERS, 400, seed=21)]
        with httpx.Client(base_url=base, timeout=30) as client:
            for start in range(0, len(commands), 200):
                items = [as_batch_item(c) for c in commands[start : start + 200]]
                reply = client.post("/api/events:batch", json={"events": items})
                assert reply.status_code == 200, reply.text
        versions = redis_versions(live.url)
        eventually(lambda: caught_up(mongo_db, versions), timeout=30, message="projected")
        before = {name: documents(mongo_db, name) for name in READ_MODELS}
        assert len(before["events"]) == sum(versions.values())
    # 2. stop everything: the processes above (SIGTERM: they drain), then back up the AOF
    # as docs/operations.md says (on the running server, with rewrites paused), then Redis
    assert all(p.poll() is not None for p in group.procs.values())
    restored_dir = tmp_path / "restored"
    restored_dir.mkdir()
    backup_aof(live.url, live.data_dir / "appendonlydir", restored_dir / "appendonlydir")
    live.stop()

    # 3. restore: a fresh redis-server on the copy
    restored = EmbeddedRedis(restored_dir, appendfsync="always")
    restored.start()
    try:
        # 4. replay into an empty database, then audit
        empty = f"{mongo_db.name}_restored"
        env = {**group.env, "REDIS_URL": restored.url, "MONGO_DB": empty}
        try:
            replayed = ledger(env, "replay")
            assert replayed.returncode == 0, replayed.stdout + replayed.stderr
            audited = ledger(env, "audit", "--json")
            assert audited.returncode == 0, audited.stdout + audited.stderr
            assert '"mismatches": []' in audited.stdout.replace("\n", "")
            rebuilt = mongo_client[empty]
            for name in READ_MODELS:
                assert documents(rebuilt, name) == before[name], f"{name} differs after replay"

            # 5. carry on: a new deployment on the restored Redis and the rebuilt database
            with deployment(restored.url, empty) as again:
                base = start_ledger(again, free_port())
                user = USERS[0]
                first = next(c for c in commands if isinstance(c, Purchase))
                with httpx.Client(base_url=base, timeout=30) as client:
                    # a transaction id used before the loss is still known: no new event
                    repeat = client.post(
                        f"/api/accounts/{first.user_id}/purchases",
                        json={
                            "amount": first.amount,
                            "currency": "USD",
                            "transaction_id": first.transaction_id,
                        },
                    )
                    assert repeat.headers.get("Idempotent-Replayed") == "true", repeat.text
                    new = client.post(
                        f"/api/accounts/{user}/purchases",
                        json={"amount": 5, "currency": "USD", "transaction_id": "after-restore"},
                    )
                    assert new.status_code == 201 and new.json()["version"] == versions[user] + 1
                expected = {**versions, user: versions[user] + 1}
                eventually(lambda: caught_up(rebuilt, expected), timeout=30, message="projected")
            final = ledger(env, "audit")
            assert final.returncode == 0, final.stdout + final.stderr
        finally:
            mongo_client.drop_database(empty)
    finally:
        restored.stop()
