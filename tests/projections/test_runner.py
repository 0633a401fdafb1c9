"""Projectors on real servers: newer version wins, redelivery and reordering are harmless,
poison goes to the dead letters, a database outage is waited out."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pymongo.database import Database

from api.dev.embedded import EmbeddedMongo
from ledger.accounts import fold
from ledger.scores import credit_score
from ledger.tasks import Priority
from projections.balances import Balances
from projections.projection import Recorded, coalesce
from projections.runner import ProjectionProcessor, all_projections, project_until_idle, projector
from projections.store import connect
from streams import QueueManager, keys
from streams.codec import decode
from streams.processor import Delivery
from tests.helpers import eventually
from tests.streamlog import account_histories, iter_entries

from .conftest import PARTITIONS, traffic


def assert_views_match_the_log(qm: QueueManager, db: Database[Any]) -> None:
    histories = account_histories(qm.redis, PARTITIONS)
    assert histories
    for user, events in histories.items():
        account = fold(events)
        assert account is not None
        doc = db.balances.find_one({"_id": user})
        assert doc is not None, user
        assert (doc["balance"], doc["version"], doc["purchased_total"], doc["used_total"]) == (
            account.totals.balance,
            account.version,
            account.totals.purchased,
            account.totals.used,
        ), user
        score = db.credit_scores.find_one({"_id": user})
        assert score is not None and score["score"] == credit_score(account.totals, account.version)
        assert score["version"] == account.version
    assert db.events.count_documents({}) == sum(len(e) for e in histories.values())


def test_projections_equal_the_fold_of_the_log(qm: QueueManager, mongo_db: Database[Any]) -> None:
    traffic(qm)
    project_until_idle(qm.redis, PARTITIONS, mongo_db)
    assert_views_match_the_log(qm, mongo_db)
    checkpoint = mongo_db.checkpoints.find_one({"_id": "balances"})
    assert checkpoint is not None and checkpoint["positions"]


def test_coalescing_keeps_the_newest_event_per_account(qm: QueueManager) -> None:
    traffic(qm, users=3, events=20)
    recs = [
        Recorded(stream="s", entry_id=f"1-{i}", event=e)
        for i, events in enumerate(account_histories(qm.redis, PARTITIONS).values())
        for e in events
    ]
    random.Random(3).shuffle(recs)
    newest = coalesce(recs)
    assert len(newest) == 3
    for rec in newest:
        assert rec.event.version == max(
            r.event.version for r in recs if r.event.user_id == rec.event.user_id
        )
    assert len(Balances(coalescing=False).plan(recs)) == len(recs)
    assert len(Balances().plan(recs)) == 3


def test_redelivered_and_reordered_batches_change_nothing(
    qm: QueueManager, mongo_db: Database[Any]
) -> None:
    traffic(qm)
    project_until_idle(qm.redis, PARTITIONS, mongo_db)
    before = {
        name: list(mongo_db[name].find({}, sort=[("_id", 1)]))
        for name in ("balances", "credit_scores", "events")
    }
    deliveries = []
    for stream, entry_id, fields in iter_entries(qm.redis, PARTITIONS):
        p, level = keys.parse_stream(stream)
        deliveries.append(
            Delivery(
                partition=p, level=level, entry_id=entry_id, fields=fields, message=decode(fields)
            )
        )
    for order in range(3):
        random.Random(order).shuffle(deliveries)
        for projection in all_projections():
            ProjectionProcessor(projection, mongo_db).process(deliveries[: 10 + order * 15])
    after = {name: list(mongo_db[name].find({}, sort=[("_id", 1)])) for name in before}
    assert {
        k: [{f: v for f, v in d.items() if f != "updated_at"} for d in docs]
        for k, docs in after.items()
    } == {
        k: [{f: v for f, v in d.items() if f != "updated_at"} for d in docs]
        for k, docs in before.items()
    }


def test_poison_entries_are_dead_lettered_and_projection_goes_on(
    qm: QueueManager, mongo_db: Database[Any]
) -> None:
    qm.register_user("a", "a@example.com")
    p = keys.partition_of("a", PARTITIONS)
    qm.redis.xadd(keys.stream(p, Priority.NORMAL), {"k": "credits_used", "u": "a", "v": "oops"})
    qm.purchase("a", 10, "t1")
    project_until_idle(qm.redis, PARTITIONS, mongo_db)
    doc = mongo_db.balances.find_one({"_id": "a"})
    assert doc is not None and doc["balance"] == 10
    groups = {d.group for d in qm.dead_letters()}
    assert groups == {"proj:balances", "proj:credit_scores", "proj:events"}


@pytest.mark.slow  # a private Mongo-wire server stopped, and waited for, then started
def test_projector_waits_out_a_database_outage(qm: QueueManager, tmp_path: Path) -> None:
    with EmbeddedMongo(tmp_path / "mongo") as server:
        client = connect(server.url, serverSelectionTimeoutMS=300, socketTimeoutMS=1000)
        db = client.ledger
        worker = projector(qm.redis, PARTITIONS, db, Balances(), block_ms=50)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            qm.register_user("b", "b@example.com")
            eventually(
                lambda: db.balances.find_one({"_id": "b"}),
                timeout=10,
                message="the registration was not projected",
            )
            server.stop()
            for i in range(5):
                qm.purchase("b", 10, f"t{i}")  # appends go on while Mongo is down
            time.sleep(1.5)  # the point: the projector retries against a dead server meanwhile
            assert qm.dead_letters() == []
            server.start()
            eventually(
                lambda: (db.balances.find_one({"_id": "b"}) or {}).get("version") == 6,
                timeout=20,
                interval=0.1,
                message="projector did not catch up",
            )
            doc = db.balances.find_one({"_id": "b"})
            assert doc is not None and doc["balance"] == 50
            assert qm.dead_letters() == []
        finally:
            worker.stop()
            thread.join(30)
            client.close()
