"""Replay rebuilds the read models from the log, document for document, while live
projectors and producers keep going."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.database import Database

from ledger.accounts import fold
from ledger.scores import credit_score
from projections.eventlog import read_log
from projections.replay import replay
from projections.runner import all_projections, projector
from streams import QueueManager
from streams.connection import connect
from tests.helpers import eventually
from tests.streamlog import account_histories

from .conftest import PARTITIONS, Cli, collection, project, traffic, trim_half

VIEWS = ("balances", "credit_scores")


def snapshot(
    db: Database[Any], names: tuple[str, ...] = (*VIEWS, "events")
) -> dict[str, list[dict[str, Any]]]:
    return {name: collection(db, name) for name in names}


@pytest.fixture
def other_db(mongo_db: Database[Any]) -> Any:
    client: MongoClient[dict[str, Any]] = mongo_db.client
    name = mongo_db.name + "_into"
    try:
        yield client[name]
    finally:
        client.drop_database(name)


def assert_views_are_the_fold(qm: QueueManager, db: Database[Any]) -> None:
    """Independent of the projections: each account's documents hold its fold."""
    histories = account_histories(qm.redis, PARTITIONS)
    assert histories
    assert sorted(d["_id"] for d in db.balances.find()) == sorted(histories)
    for user, events in histories.items():
        account = fold(events)
        assert account is not None
        doc = db.balances.find_one({"_id": user})
        assert doc is not None
        assert (doc["version"], doc["balance"], doc["purchased_total"], doc["used_total"]) == (
            account.version,
            account.totals.balance,
            account.totals.purchased,
            account.totals.used,
        ), user
        score = db.credit_scores.find_one({"_id": user})
        assert score is not None
        assert (score["version"], score["score"]) == (
            account.version,
            credit_score(account.totals, account.version),
        ), user


def test_replay_reproduces_the_live_views(qm: QueueManager, mongo_db: Database[Any]) -> None:
    traffic(qm, users=6, events=60)
    project(qm, mongo_db)
    live = snapshot(mongo_db)
    assert len(live["balances"]) == 6 and len(live["events"]) > 50
    # damage the live views: replay must rebuild them, not keep them
    mongo_db.balances.update_one({"_id": "u1"}, {"$set": {"balance": 10**9}})
    mongo_db.balances.delete_one({"_id": "u2"})
    mongo_db.credit_scores.update_one({"_id": "u3"}, {"$set": {"score": 1}})
    mongo_db.credit_scores.insert_one({"_id": "ghost", "score": 500, "version": 1})
    result = replay(qm.redis, PARTITIONS, mongo_db)
    assert snapshot(mongo_db) == live
    assert result.swapped == list(VIEWS)
    assert (result.events, result.accounts) == (len(live["events"]), 6)
    assert result.archived == 0 and result.caught_up == 0 and result.gaps == []
    assert not [c for c in mongo_db.list_collection_names() if "__replay_" in c]
    assert result.summary().startswith(f"replayed {result.events} events of 6 accounts in ")
    assert result.summary().endswith(" events/s)")


def test_replay_only_one_view(qm: QueueManager, mongo_db: Database[Any]) -> None:
    traffic(qm, users=3, events=20)
    project(qm, mongo_db)
    live = snapshot(mongo_db)
    mongo_db.balances.update_one({"_id": "u0"}, {"$set": {"balance": -1}})
    mongo_db.credit_scores.update_one({"_id": "u0"}, {"$set": {"score": -1}})
    result = replay(qm.redis, PARTITIONS, mongo_db, only=["credit_scores"])
    assert result.swapped == ["credit_scores"]
    assert collection(mongo_db, "credit_scores") == live["credit_scores"]
    doc = mongo_db.balances.find_one({"_id": "u0"})
    assert doc is not None and doc["balance"] == -1  # not chosen: untouched
    with pytest.raises(ValueError, match="unknown read model"):
        replay(qm.redis, PARTITIONS, mongo_db, only=["balances", "users"])


def test_replay_into_another_database(
    qm: QueueManager, mongo_db: Database[Any], other_db: Database[Any]
) -> None:
    traffic(qm, users=4, events=40)
    project(qm, mongo_db)
    live = snapshot(mongo_db)
    mongo_db.balances.update_one({"_id": "u1"}, {"$set": {"balance": 7}})
    other_db.balances.insert_one({"_id": "stale", "balance": 1})  # replaced, not merged
    result = replay(qm.redis, PARTITIONS, mongo_db, into=other_db)
    assert result.database == other_db.name
    assert snapshot(other_db) == live
    doc = mongo_db.balances.find_one({"_id": "u1"})
    assert doc is not None and doc["balance"] == 7  # the live db untouched
    assert sorted(other_db.list_collection_names()) == ["balances", "credit_scores", "events"]


def test_catch_up_applies_what_live_projectors_wrote_to_the_old_collections(
    qm: QueueManager, mongo_db: Database[Any]
) -> None:
    traffic(qm, users=3, events=20)
    project(qm, mongo_db)
    done: list[str] = []

    def meanwhile(phase: str) -> None:
        # between reading the log and the first swap: new events arrive and the live
        # projectors apply (and acknowledge) them in the collections about to be replaced
        if phase == "swap" and not done:
            done.append(phase)
            qm.purchase("u0", 1000, "during-1")
            qm.register_user("newcomer", "n@example.com")
            qm.purchase("newcomer", 50, "during-2")
            project(qm, mongo_db)

    result = replay(qm.redis, PARTITIONS, mongo_db, observer=meanwhile)
    assert done
    assert result.caught_up == 2
    assert_views_are_the_fold(qm, mongo_db)
    doc = mongo_db.balances.find_one({"_id": "newcomer"})
    assert doc is not None and doc["balance"] == 50


def test_replay_while_producers_and_projectors_run(
    qm: QueueManager, redis_url: str, mongo_db: Database[Any], other_db: Database[Any]
) -> None:
    """Producers append and live projectors apply throughout the read and the rebuild;
    producers also append across the swap, so the catch-up must bring those in.

    The live projectors are paused for the rename itself: the Mongo-wire test
    server can wedge for good when a write races its renameCollection (seen under
    py-spy: the rename spinning in a WiredTiger insert while holding the storage
    lock that every other connection waits for). Real MongoDB serialises the two.
    """
    traffic(qm, users=5, events=30)
    project(qm, mongo_db)
    stop = threading.Event()
    appended = [0]
    producer_client = connect(redis_url)
    producer = QueueManager(config=qm.config, client=producer_client, registry=qm.registry)

    def produce() -> None:
        i = 0
        while not stop.is_set():
            user = f"u{i % 5}" if i % 7 else f"live{i}"
            if user.startswith("live"):
                producer.register_user(user, f"{user}@example.com")
            else:
                producer.purchase(user, 1 + i % 9, f"live-{i}")
            appended[0] += 1
            i += 1
            time.sleep(0.005)  # paces the producer: live traffic, not a flood

    live: list[tuple[Any, threading.Thread]] = []

    def start_projectors() -> None:
        for p in all_projections():
            worker = projector(qm.redis, PARTITIONS, mongo_db, p, block_ms=50)
            thread = threading.Thread(target=worker.run, name=f"live-{p.name}", daemon=True)
            thread.start()
            live.append((worker, thread))

    def stop_projectors() -> None:
        for worker, _ in live:
            worker.stop()
        for _, thread in live:
            thread.join(30)
        assert not [t.name for _, t in live if t.is_alive()], "a live projector did not stop"
        live.clear()

    def wait_for_appends(n: int) -> int:
        start = appended[0]
        eventually(
            lambda: appended[0] >= start + n,
            timeout=10,
            interval=0.01,
            message=f"the producer did not append {n} events",
        )
        return appended[0] - start

    during: dict[str, int] = {}

    def watch(phase: str) -> None:
        if phase == "rebuild" and "rebuild" not in during:
            during["rebuild"] = wait_for_appends(20)  # producers and projectors move on
        elif phase == "swap":
            stop_projectors()
            during.setdefault("swap", wait_for_appends(5))  # appended, not yet projected
        elif phase == "catch-up":
            start_projectors()

    producer_thread = threading.Thread(target=produce, name="producer", daemon=True)
    start_projectors()
    producer_thread.start()
    try:
        result = replay(qm.redis, PARTITIONS, mongo_db, observer=watch)
    finally:
        stop.set()
        producer_thread.join(10)
        stop_projectors()
        producer.close()
    assert not producer_thread.is_alive()
    assert during["rebuild"] >= 20 and during["swap"] >= 5
    assert result.caught_up >= 1
    project(qm, mongo_db)  # drain what the live projectors had not reached yet
    assert result.swapped == list(VIEWS)
    assert_views_are_the_fold(qm, mongo_db)
    replay(qm.redis, PARTITIONS, mongo_db, into=other_db)
    assert snapshot(other_db) == snapshot(mongo_db)


def test_replay_after_trimming(
    qm: QueueManager, mongo_db: Database[Any], other_db: Database[Any]
) -> None:
    traffic(qm, users=4, events=40)
    project(qm, mongo_db)
    live = snapshot(mongo_db)
    assert trim_half(qm.redis) > 10
    replay(qm.redis, PARTITIONS, mongo_db, into=other_db)
    assert snapshot(other_db) == live
    mongo_db.balances.delete_many({})
    replay(qm.redis, PARTITIONS, mongo_db)
    assert snapshot(mongo_db) == live


def test_archive_replay_inserts_what_is_missing_and_drops_nothing(
    qm: QueueManager, mongo_db: Database[Any]
) -> None:
    traffic(qm, users=3, events=30)
    project(qm, mongo_db)
    live = collection(mongo_db, "events")
    trim_half(qm.redis)  # the archive alone now holds the trimmed events
    kept = {
        e.id
        for v in read_log(qm.redis, PARTITIONS, mongo_db).values()
        for e in v
        if e.stream is not None
    }
    lost = sorted(kept)[:5]
    mongo_db.events.delete_many({"_id": {"$in": lost}})
    result = replay(qm.redis, PARTITIONS, mongo_db, only=["events"])
    assert result.archived == 5 and result.swapped == []
    assert collection(mongo_db, "events") == live


def test_replay_keeps_the_live_indexes(qm: QueueManager, mongo_db: Database[Any]) -> None:
    traffic(qm, users=2, events=10)
    project(qm, mongo_db)
    mongo_db.balances.create_index("balance", name="by_balance")
    replay(qm.redis, PARTITIONS, mongo_db, only=["balances"])
    assert "by_balance" in mongo_db.balances.index_information()


def test_replay_of_an_empty_log_empties_the_views(
    qm: QueueManager, mongo_db: Database[Any]
) -> None:
    mongo_db.balances.insert_one({"_id": "nobody", "balance": 3, "version": 1})
    result = replay(qm.redis, PARTITIONS, mongo_db)
    assert (result.events, result.accounts) == (0, 0)
    assert collection(mongo_db, "balances") == []


def test_cli_replay(
    qm: QueueManager,
    mongo_db: Database[Any],
    other_db: Database[Any],
    cli: Cli,
    capsys: pytest.CaptureFixture[str],
) -> None:
    traffic(qm, users=3, events=20)
    project(qm, mongo_db)
    live = snapshot(mongo_db)
    mongo_db.balances.update_one({"_id": "u0"}, {"$set": {"balance": 1}})
    assert cli("replay", "--progress") == 0
    out, err = capsys.readouterr()
    n = len(live["events"])
    assert f"replayed {n} events of 3 accounts in " in out
    assert "balances: rebuilt and swapped into" in out
    assert "\rreplay" in err
    assert snapshot(mongo_db) == live
    assert cli("replay", "--into", other_db.name, "--only", "balances,credit_scores") == 0
    assert "built in database" in capsys.readouterr().out
    assert snapshot(other_db, VIEWS) == snapshot(mongo_db, VIEWS)
    assert cli("replay", "--only", "balances,users") == 2
    assert "unknown read model(s): users" in capsys.readouterr().err
    assert cli("replay", "--into", "bad.name") == 2
    assert cli("replay", "--into", "admin") == 2
