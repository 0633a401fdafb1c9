"""Writes of two projectors of one read model racing, and duplicate keys that are
not "already there": nothing is dropped, nothing is taken as written that was not."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import pymongo
import pytest
from pymongo import monitoring
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from api.dev.deployment import Deployment
from ledger.errors import InsufficientCredits
from projections.projection import Insert, Upsert
from projections.replay import replay
from projections.runner import apply_writes
from projections.store import connect
from streams import QueueManager, keys
from tests.helpers import eventually
from tests.streamlog import account_histories

from .conftest import PARTITIONS, collection

GROUP = "proj:balances"


def streams() -> list[str]:
    return [keys.stream(p, lv) for p in keys.partitions(PARTITIONS) for lv in keys.LEVELS_DESC]


def assert_equals_a_replay(
    qm: QueueManager, db: Database[Any], client: pymongo.MongoClient[Any], *views: str
) -> None:
    """Each of ``views`` in ``db`` is, document for document, what ``ledger replay``
    builds from the log into a database of its own."""
    other = client[f"{db.name}_replay"]
    try:
        replay(qm.redis, PARTITIONS, db, only=views, into=other)
        for name in views:
            assert collection(db, name) == collection(other, name), name
    finally:
        client.drop_database(other.name)


class AfterReply(monitoring.CommandListener):
    """Runs ``then`` once, right after the server answered the next ``command``
    (before the driver hands the answer to the caller)."""

    def __init__(self) -> None:
        self.command = ""
        self.then: Callable[[], None] | None = None

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.command_name == self.command and self.then is not None:
            then, self.then = self.then, None
            then()

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def watched(mongo_url: str, mongo_db: Database[Any]) -> Iterator[tuple[Database[Any], AfterReply]]:
    """The test database through a client of its own that reports each reply."""
    listener = AfterReply()
    client: pymongo.MongoClient[dict[str, Any]] = connect(mongo_url, event_listeners=[listener])
    try:
        yield client[mongo_db.name], listener
    finally:
        client.close()


def test_an_upsert_that_lost_the_race_to_create_its_document_is_applied(
    watched: tuple[Database[Any], AfterReply], mongo_db: Database[Any]
) -> None:
    """Projector B's v2 upsert clashes (11000) because projector A created the
    document first, with v1. The server's answer and the state it leaves are made
    real here: B's upsert meets a document it may not update and gets a genuine
    duplicate-key error; right after that answer the document holds A's v1, as
    when A's insert won the race. B must still end with v2 stored."""
    db, listener = watched
    mongo_db.balances.insert_one({"_id": "alice", "version": 3, "balance": 30})
    listener.command = "update"

    def older_insert_won() -> None:
        mongo_db.balances.replace_one({"_id": "alice"}, {"version": 1, "balance": 10})

    listener.then = older_insert_won
    apply_writes(
        db, "balances", [Upsert(key="alice", version=2, fields={"version": 2, "balance": 20})]
    )
    assert listener.then is None, "the race was staged"
    assert mongo_db.balances.find_one({"_id": "alice"}) == {
        "_id": "alice",
        "version": 2,
        "balance": 20,
    }


def test_an_upsert_older_than_the_stored_document_changes_nothing(mongo_db: Database[Any]) -> None:
    mongo_db.balances.insert_one({"_id": "bob", "version": 5, "balance": 50})
    apply_writes(
        mongo_db,
        "balances",
        [
            Upsert(key="bob", version=4, fields={"version": 4, "balance": 40}),
            Upsert(key="carol", version=1, fields={"version": 1, "balance": 1}),
        ],
    )
    assert list(mongo_db.balances.find({}, sort=[("_id", 1)])) == [
        {"_id": "bob", "version": 5, "balance": 50},
        {"_id": "carol", "version": 1, "balance": 1},
    ]


def test_an_insert_clashing_on_another_unique_index_is_not_taken_as_archived(
    mongo_db: Database[Any],
) -> None:
    mongo_db.events.create_index("entry_id", unique=True)
    mongo_db.events.insert_one({"_id": "squatter", "entry_id": "1-1"})
    apply_writes(mongo_db, "events", [Insert(document={"_id": "squatter", "entry_id": "1-1"})])
    with pytest.raises(DuplicateKeyError):
        apply_writes(mongo_db, "events", [Insert(document={"_id": "r:1", "entry_id": "1-1"})])
    assert mongo_db.events.find_one({"_id": "r:1"}) is None


@pytest.mark.slow  # two projector processes racing
def test_two_projector_processes_of_one_read_model_end_at_every_last_version(
    qm: QueueManager,
    mongo_db: Database[Any],
    mongo_client: pymongo.MongoClient[Any],
    deployment: Deployment,
) -> None:
    users = [f"t{i}" for i in range(6)]
    for u in users:
        qm.register_user(u, f"{u}@example.com")
    procs = [
        deployment.start(f"projector-{i}", "project", "--only", "balances", "--batch", "4")
        for i in range(2)
    ]
    rng = random.Random(11)
    for i in range(240):
        u = rng.choice(users)
        if rng.random() < 0.6:
            qm.purchase(u, rng.randint(1, 50), f"race-{i}")
        else:
            with contextlib.suppress(InsufficientCredits):
                qm.use(u, rng.randint(1, 40))
    last = {u: events[-1].version for u, events in account_histories(qm.redis, PARTITIONS).items()}

    def reached() -> bool:
        stored = {d["_id"]: d["version"] for d in mongo_db.balances.find()}
        assert stored == last, f"balances {stored} never reached {last}"
        return True

    eventually(reached, timeout=60, interval=0.1)
    assert all(p.poll() is None for p in procs), "both projectors ran throughout"
    consumers = {c["name"] for s in streams() for c in qm.redis.xinfo_consumers(s, GROUP)}
    assert len({name.split(b":")[1] for name in consumers}) == 2, "two processes consumed"
    assert_equals_a_replay(qm, mongo_db, mongo_client, "balances")
