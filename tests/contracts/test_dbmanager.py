"""The contract of ``streams.handlers.DBManager`` / ``BoundDBManager``.

``DBManagerContract`` states what every implementation must do; a subclass per
implementation provides two fixtures: ``make_manager(allowed)`` and ``store``,
a raw view of the underlying storage used to seed data and to check that a
refused call wrote nothing. ``TestMongoDBManager`` runs it against
``projections.store.MongoDBManager`` on the session's Mongo-wire server, and
adds the checks that only make sense for MongoDB.

Writes are kept few: the Mongo-wire server does about a thousand a second.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import pymongo
import pytest
from pymongo.database import Database

from ledger.errors import Conflict, ValidationError
from projections.store import DuplicateDocument, MongoDBManager, StoreUnavailable, connect
from streams.handlers import BoundDBManager, DBManager

ORIGINAL = frozenset({"users", "credit_purchases", "credit_usage", "credit_updates",
                      "credit_calculations", "notifications", "analytics"})  # fmt: skip
# An allow-list that wrongly names read models and a system collection: the
# manager must refuse them anyway.
ALLOWED = ORIGINAL | {
    "balances",
    "credit_scores",
    "events",
    "checkpoints",
    "task_targets",
    "system.js",
}
SEED_USER = {"_id": "u1", "email": "a@example.com", "credits": 5}
SEED_BALANCE = {"_id": "u1", "balance": 5, "version": 1}


class Manager(DBManager, BoundDBManager, Protocol):
    """What a worker holds: a DBManager that can also bind itself to a delivery."""


class RawStore(Protocol):
    """Direct access to the storage behind a manager, bypassing its checks."""

    def put(self, collection: str, document: dict[str, Any]) -> None: ...

    def all(self, collection: str) -> list[dict[str, Any]]: ...

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Every collection's documents, to prove that nothing was written."""
        ...


MakeManager = Callable[[frozenset[str]], Manager]


class DBManagerContract:
    @pytest.fixture
    def make_manager(self) -> MakeManager:
        raise NotImplementedError

    @pytest.fixture
    def store(self) -> RawStore:
        raise NotImplementedError

    @pytest.fixture
    def manager(self, make_manager: MakeManager) -> Manager:
        return make_manager(ALLOWED)

    @pytest.fixture
    def seeded(self, manager: Manager, store: RawStore) -> Manager:
        store.put("users", dict(SEED_USER))
        store.put("balances", dict(SEED_BALANCE))
        return manager

    # -- the original operations ------------------------------------------------

    def test_insert_then_find_one(self, manager: Manager, store: RawStore) -> None:
        doc_id = manager.insert("users", {"_id": "u9", "email": "z@example.com", "credits": 0})
        assert doc_id == "u9"
        found = manager.find_one("users", {"email": "z@example.com"})
        assert found == {"_id": "u9", "email": "z@example.com", "credits": 0}
        assert type(found) is dict
        assert manager.find_one("users", {"email": "nobody@example.com"}) is None
        assert store.all("users") == [found]

    def test_insert_without_id_returns_the_stored_id(
        self, manager: Manager, store: RawStore
    ) -> None:
        document = {"email": "n@example.com"}
        doc_id = manager.insert("notifications", document)
        assert document == {"email": "n@example.com"}, "the caller's mapping is not mutated"
        [stored] = store.all("notifications")
        assert isinstance(doc_id, str)
        assert str(stored["_id"]) == doc_id

    def test_find_many_filters_orders_and_limits(self, manager: Manager, store: RawStore) -> None:
        for key, kind in [("c", "x"), ("a", "x"), ("b", "y"), ("d", "x")]:
            store.put("analytics", {"_id": key, "kind": kind})
        assert [d["_id"] for d in manager.find_many("analytics")] == ["a", "b", "c", "d"]
        assert [d["_id"] for d in manager.find_many("analytics", {"kind": "x"})] == ["a", "c", "d"]
        assert [d["_id"] for d in manager.find_many("analytics", {"kind": "x"}, limit=2)] == [
            "a",
            "c",
        ]
        assert all(type(d) is dict for d in manager.find_many("analytics"))

    @pytest.mark.parametrize("limit", [0, -1, 1001, True, 2.5, "10"])
    def test_find_many_limit_is_bounded(self, manager: Manager, limit: Any) -> None:
        with pytest.raises(ValidationError) as info:
            manager.find_many("users", {}, limit=limit)
        assert info.value.field == "limit"

    def test_update_sets_fields_on_the_first_match_only(
        self, seeded: Manager, store: RawStore
    ) -> None:
        store.put("users", {"_id": "u2", "email": "b@example.com", "credits": 5})
        assert seeded.update("users", {"credits": 5}, {"credits": 7, "tier": "gold"}) == 1
        assert store.all("users") == [
            {"_id": "u1", "email": "a@example.com", "credits": 7, "tier": "gold"},
            {"_id": "u2", "email": "b@example.com", "credits": 5},
        ]
        assert seeded.update("users", {"_id": "nobody"}, {"credits": 1}) == 0

    def test_update_with_dotted_path_sets_a_nested_field(
        self, seeded: Manager, store: RawStore
    ) -> None:
        assert seeded.update("users", {"_id": "u1"}, {"profile.name": "Ada"}) == 1
        assert store.all("users")[0]["profile"] == {"name": "Ada"}

    def test_delete_removes_the_first_match_only(self, seeded: Manager, store: RawStore) -> None:
        store.put("users", {"_id": "u2", "email": "b@example.com", "credits": 5})
        assert seeded.delete("users", {"credits": 5}) == 1
        assert [d["_id"] for d in store.all("users")] == ["u2"]
        assert seeded.delete("users", {"_id": "nobody"}) == 0

    def test_insert_all_writes_each_once_even_when_redelivered(
        self, manager: Manager, store: RawStore
    ) -> None:
        docs = [{"_id": f"u{i}:2", "amount": i} for i in range(5)]
        manager.insert_all("credit_purchases", docs[:3])
        manager.insert_all("credit_purchases", docs)  # a redelivered round: no error
        assert store.all("credit_purchases") == docs
        manager.insert_all("credit_purchases", [])

    def test_insert_all_refuses_what_insert_refuses(self, seeded: Manager, store: RawStore) -> None:
        before = store.snapshot()
        cases: list[tuple[list[dict[str, Any]], str]] = [
            ([{"_id": "x", "$where": "1"}], "document"),
            ([{"_id": "a", "n": 1}, {"n": 2}], "document"),
            ([{"_id": "x", "n": 2**70}], "document"),
        ]
        for bad, field in cases:
            with pytest.raises(ValidationError) as info:
                seeded.insert_all("analytics", bad)
            assert info.value.field == field
        assert store.snapshot() == before

    def test_insert_of_an_existing_id_is_a_conflict(self, seeded: Manager, store: RawStore) -> None:
        with pytest.raises(Conflict) as info:
            seeded.insert("users", {"_id": "u1", "email": "other@example.com"})
        assert info.value.code == "duplicate_document"
        assert store.all("users") == [SEED_USER]

    # -- idempotency per delivery -----------------------------------------------

    def test_same_event_inserts_one_document(self, manager: Manager, store: RawStore) -> None:
        first = manager.for_event("1700000000000-0").insert("credit_purchases", {"amount": 10})
        again = manager.for_event("1700000000000-0").insert("credit_purchases", {"amount": 10})
        assert first == again == "1700000000000-0"
        assert store.all("credit_purchases") == [{"_id": "1700000000000-0", "amount": 10}]

    def test_two_inserts_in_one_delivery_survive_redelivery(
        self, manager: Manager, store: RawStore
    ) -> None:
        def handler(db: DBManager) -> list[str]:
            return [db.insert("credit_usage", {"amount": 3}), db.insert("analytics", {"n": 1}),
                    db.insert("credit_usage", {"amount": 4})]  # fmt: skip

        expected = ["1700000000000-1", "1700000000000-1:2", "1700000000000-1:3"]
        assert handler(manager.for_event("1700000000000-1")) == expected
        assert handler(manager.for_event("1700000000000-1")) == expected  # redelivered
        assert store.all("credit_usage") == [
            {"_id": "1700000000000-1", "amount": 3},
            {"_id": "1700000000000-1:3", "amount": 4},
        ]
        assert store.all("analytics") == [{"_id": "1700000000000-1:2", "n": 1}]

    def test_different_events_insert_different_documents(
        self, manager: Manager, store: RawStore
    ) -> None:
        manager.for_event("1-0").insert("credit_updates", {"delta": 1})
        manager.for_event("2-0").insert("credit_updates", {"delta": 1})
        assert [d["_id"] for d in store.all("credit_updates")] == ["1-0", "2-0"]

    def test_bound_insert_of_a_taken_caller_id_is_a_conflict(
        self, seeded: Manager, store: RawStore
    ) -> None:
        with pytest.raises(Conflict):
            seeded.for_event("5-0").insert("users", {"_id": "u1", "email": "x@example.com"})
        assert store.all("users") == [SEED_USER]

    def test_bound_manager_keeps_every_rule(self, seeded: Manager, store: RawStore) -> None:
        bound = seeded.for_event("6-0")
        before = store.snapshot()
        with pytest.raises(ValidationError):
            bound.insert("balances", {"balance": 10**6})
        with pytest.raises(ValidationError):
            bound.update("users", {"_id": "u1"}, {"$inc": {"credits": 1}})
        assert store.snapshot() == before

    # -- update and delete of a redelivered task reach one document ------------------

    def test_redelivered_update_that_changes_its_filtered_field_updates_one_document(
        self, seeded: Manager, store: RawStore
    ) -> None:
        store.put("users", {"_id": "u2", "email": "b@example.com", "credits": 5})
        for _ in range(2):  # the delivery, then its redelivery
            assert seeded.for_event("task-1").update("users", {"credits": 5}, {"credits": 7}) == 1
        assert [(d["_id"], d["credits"]) for d in store.all("users")] == [("u1", 7), ("u2", 5)]

    def test_redelivered_delete_deletes_one_document(
        self, seeded: Manager, store: RawStore
    ) -> None:
        store.put("users", {"_id": "u2", "email": "b@example.com", "credits": 5})
        assert seeded.for_event("task-2").delete("users", {"credits": 5}) == 1
        assert seeded.for_event("task-2").delete("users", {"credits": 5}) == 0  # redelivered
        assert [d["_id"] for d in store.all("users")] == ["u2"]
        assert seeded.for_event("task-3").delete("users", {"credits": 5}) == 1  # another task
        assert store.all("users") == []

    def test_each_update_of_one_delivery_is_resolved_on_its_own(
        self, seeded: Manager, store: RawStore
    ) -> None:
        store.put("users", {"_id": "u2", "email": "b@example.com", "credits": 5})

        def handler(db: DBManager) -> list[int]:
            return [
                db.update("users", {"credits": 5}, {"credits": 6}),
                db.update("users", {"credits": 5}, {"credits": 6}),
            ]

        assert handler(seeded.for_event("task-4")) == [1, 1]
        assert handler(seeded.for_event("task-4")) == [1, 1]  # redelivered: the same two
        store.put("users", {"_id": "u3", "credits": 5})
        assert handler(seeded.for_event("task-4")) == [1, 1]
        assert [(d["_id"], d["credits"]) for d in store.all("users")] == [
            ("u1", 6),
            ("u2", 6),
            ("u3", 5),
        ]

    def test_a_delivery_that_died_after_resolving_acts_on_the_same_document(
        self, seeded: Manager, store: RawStore
    ) -> None:
        """The worker died between recording the target and deleting it; meanwhile a
        document that sorts first started to match. The redelivery deletes the target."""
        seeded.for_event("task-5")._target("delete", "users", {"credits": 5})  # type: ignore[attr-defined]
        store.put("users", {"_id": "u0", "credits": 5})
        assert seeded.for_event("task-5").delete("users", {"credits": 5}) == 1
        assert [d["_id"] for d in store.all("users")] == ["u0"]

    # -- recorded ledger events are unforgeable ------------------------------------

    @pytest.mark.parametrize("bound", [False, True])
    @pytest.mark.parametrize(
        ("call", "field"),
        [
            pytest.param(lambda m: m.insert("users", {"_id": "bob:1", "email": "x"}), "document",
                         id="insert-event-id"),
            pytest.param(lambda m: m.insert("credit_purchases", {"_id": "bob:5:2"}), "document",
                         id="insert-event-id-of-a-user-with-colon"),
            pytest.param(lambda m: m.update("credit_usage", {"_id": "alice:2"}, {"amount": 1}),
                         "filter", id="update-by-event-id"),
            pytest.param(lambda m: m.delete("credit_updates", {"_id": "alice:3"}), "filter",
                         id="delete-by-event-id"),
            pytest.param(lambda m: m.update("credit_purchases", {"user_id": "alice"},
                                            {"amount": 10**6}), "filter",
                         id="update-matching-only-events"),
            pytest.param(lambda m: m.delete("credit_purchases", {"amount": 50}), "filter",
                         id="delete-matching-only-events"),
            pytest.param(lambda m: m.update("credit_purchases", {"_id": "alice:1", "$or": []},
                                            {"amount": 1}), "filter", id="dollar-key"),
        ],
    )  # fmt: skip
    def test_recorded_events_cannot_be_forged_or_changed(
        self,
        manager: Manager,
        store: RawStore,
        call: Callable[[Manager], object],
        field: str,
        bound: bool,
    ) -> None:
        manager.insert_all(
            "credit_purchases", [{"_id": "alice:2", "user_id": "alice", "amount": 50}]
        )
        before = store.snapshot()
        with pytest.raises(ValidationError) as info:
            call(manager.for_event("task-6") if bound else manager)  # type: ignore[arg-type]
        assert info.value.field == field
        assert "ledger event" in str(info.value) or "$" in str(info.value)
        assert store.snapshot() == before

    def test_tasks_change_their_own_documents_beside_recorded_events(
        self, manager: Manager, store: RawStore
    ) -> None:
        manager.insert_all(
            "credit_purchases", [{"_id": "alice:2", "user_id": "alice", "amount": 50}]
        )
        task = manager.for_event("task-7")
        assert task.insert("credit_purchases", {"user_id": "alice", "amount": 50}) == "task-7"
        assert task.insert("analytics", {"_id": "bob:1"}) == "bob:1"  # not an event collection
        assert task.update("credit_purchases", {"user_id": "alice"}, {"note": "x"}) == 1
        assert task.delete("credit_purchases", {"amount": 50}) == 1
        assert store.all("credit_purchases") == [
            {"_id": "alice:2", "user_id": "alice", "amount": 50}
        ]

    def test_the_recorder_still_records_the_real_event(
        self, manager: Manager, store: RawStore
    ) -> None:
        with pytest.raises(ValidationError):
            manager.for_event("task-8").insert("users", {"_id": "bob:1", "email": "forged"})
        manager.insert_all("users", [{"_id": "bob:1", "email": "bob@example.com"}])
        assert manager.for_event("bob:2").insert("users", {"email": "b2"}) == "bob:2"
        assert store.all("users") == [
            {"_id": "bob:1", "email": "bob@example.com"},
            {"_id": "bob:2", "email": "b2"},
        ]

    # -- hostile input: a clear error, and nothing written -------------------------

    @pytest.mark.parametrize(
        ("call", "field"),
        [
            pytest.param(lambda m: m.find_one("users", {"$where": "1"}), "filter", id="find-top"),
            pytest.param(lambda m: m.find_one("users", {"email": {"$ne": None}}), "filter",
                         id="find-nested"),
            pytest.param(lambda m: m.find_many("users", {"a": [{"b": {"$gt": 1}}]}), "filter",
                         id="find-in-list"),
            pytest.param(lambda m: m.update("users", {"_id": {"$exists": True}}, {"x": 1}),
                         "filter", id="update-filter"),
            pytest.param(lambda m: m.update("users", {"_id": "u1"}, {"$inc": {"credits": 9}}),
                         "data", id="update-operator"),
            pytest.param(lambda m: m.update("users", {"_id": "u1"}, {"p": {"q": {"$x": 1}}}),
                         "data", id="update-deep"),
            pytest.param(lambda m: m.update("users", {"_id": "u1"}, {"tags.$": "x"}), "data",
                         id="update-positional"),
            pytest.param(lambda m: m.update("users", {"_id": "u1"}, {"_id": "u2"}), "data",
                         id="update-id"),
            pytest.param(lambda m: m.update("users", {"_id": "u1"}, {"_id.x": 1}), "data",
                         id="update-id-path"),
            pytest.param(lambda m: m.update("users", {"_id": "u1"}, {}), "data",
                         id="update-nothing"),
            pytest.param(lambda m: m.update("users", {}, {"credits": 0}), "filter",
                         id="update-any"),
            pytest.param(lambda m: m.delete("users", {"credits": {"$gte": 0}}), "filter",
                         id="delete-operator"),
            pytest.param(lambda m: m.delete("users", {}), "filter", id="delete-any"),
            pytest.param(lambda m: m.insert("users", {"_id": "u3", "$set": {"a": 1}}),
                         "document", id="insert-top"),
            pytest.param(lambda m: m.insert("users", {"_id": "u3", "l": [[{"$x": 1}]]}),
                         "document", id="insert-deep-list"),
            pytest.param(lambda m: m.insert("users", {"_id": {"$gt": ""}}), "document",
                         id="insert-id-operator"),
            pytest.param(lambda m: m.insert("users", {"_id": "u3", "n": 2**63}), "document",
                         id="insert-int64-overflow"),
            pytest.param(lambda m: m.insert("users", ["not", "a", "mapping"]), "document",
                         id="insert-not-mapping"),
        ],
    )  # fmt: skip
    def test_operator_injection_is_refused(
        self, seeded: Manager, store: RawStore, call: Callable[[Manager], object], field: str
    ) -> None:
        before = store.snapshot()
        with pytest.raises(ValidationError) as info:
            call(seeded)
        assert info.value.field == field
        assert store.snapshot() == before

    @pytest.mark.parametrize(
        "collection",
        ["balances", "credit_scores", "events", "checkpoints", "task_targets", "system.js",
         "system.users", "secrets", "", 7],
    )  # fmt: skip
    @pytest.mark.parametrize(
        "operation", ["find_one", "find_many", "insert", "update", "delete", "insert_all"]
    )
    def test_forbidden_collections_are_refused(
        self, seeded: Manager, store: RawStore, collection: Any, operation: str
    ) -> None:
        calls: dict[str, Callable[[], object]] = {
            "find_one": lambda: seeded.find_one(collection, {"_id": "u1"}),
            "find_many": lambda: seeded.find_many(collection),
            "insert": lambda: seeded.insert(collection, {"_id": "u1", "balance": 10**9}),
            "update": lambda: seeded.update(collection, {"_id": "u1"}, {"balance": 10**9}),
            "delete": lambda: seeded.delete(collection, {"_id": "u1"}),
            "insert_all": lambda: seeded.insert_all(collection, [{"_id": "u1", "balance": 1}]),
        }
        before = store.snapshot()
        with pytest.raises(ValidationError) as info:
            calls[operation]()
        assert info.value.field == "collection"
        assert store.snapshot() == before


# -- MongoDBManager on the Mongo-wire server -------------------------------------


class _MongoRawStore:
    def __init__(self, db: Database[Any]) -> None:
        self.db = db

    def put(self, collection: str, document: dict[str, Any]) -> None:
        self.db[collection].insert_one(document)

    def all(self, collection: str) -> list[dict[str, Any]]:
        return list(self.db[collection].find().sort("_id", 1))

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        return {name: self.all(name) for name in sorted(self.db.list_collection_names())}


class TestMongoDBManager(DBManagerContract):
    @pytest.fixture
    def make_manager(self, mongo_db: Database[Any]) -> MakeManager:
        return lambda allowed: MongoDBManager(mongo_db, allowed)

    @pytest.fixture
    def store(self, mongo_db: Database[Any]) -> RawStore:
        return _MongoRawStore(mongo_db)

    def test_allow_list_never_includes_read_models(self, manager: MongoDBManager) -> None:
        assert manager.allowed == ORIGINAL

    def test_duplicate_on_another_unique_index_is_not_taken_as_done(
        self, manager: Manager, store: RawStore, mongo_db: Database[Any]
    ) -> None:
        mongo_db["users"].create_index("email", unique=True)
        manager.for_event("1-0").insert("users", {"email": "a@example.com"})
        with pytest.raises(DuplicateDocument):
            manager.for_event("2-0").insert("users", {"email": "a@example.com"})
        assert store.all("users") == [{"_id": "1-0", "email": "a@example.com"}]
        with pytest.raises(DuplicateDocument):
            manager.insert_all(
                "users",
                [
                    {"_id": "3-0", "email": "b@example.com"},
                    {"_id": "4-0", "email": "a@example.com"},
                ],
            )
        assert [d["_id"] for d in store.all("users")] == ["1-0", "3-0"]

    def test_unstorable_value_is_a_validation_error(
        self, manager: Manager, store: RawStore
    ) -> None:
        with pytest.raises(ValidationError) as info:
            manager.insert("users", {"_id": "u5", "tags": {"a", "b"}})
        assert info.value.field == "document"
        assert store.snapshot() == {}

    def test_writes_ask_for_the_journal(self, mongo_db: Database[Any]) -> None:
        majority = mongo_db.client.get_database(
            mongo_db.name, write_concern=pymongo.WriteConcern(w="majority")
        )
        manager = MongoDBManager(majority, ORIGINAL)
        assert manager._collection("users", write=True).write_concern.document == {
            "w": "majority",
            "j": True,
        }

    def test_unreachable_server_is_store_unavailable(self) -> None:
        from api.dev.embedded import free_port

        with connect(f"mongodb://127.0.0.1:{free_port()}/", serverSelectionTimeoutMS=200) as c:
            manager = MongoDBManager(c["ledger"], ORIGINAL)
            for call in (
                lambda: manager.find_one("users", {"_id": "u1"}),
                lambda: manager.for_event("1-0").insert("users", {"a": 1}),
            ):
                with pytest.raises(StoreUnavailable) as info:
                    call()
                assert info.value.__cause__ is None
                assert info.value.__suppress_context__ is True
                assert "127.0.0.1" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "mongodb://127.0.0.1:1/",
        "mongodb://127.0.0.1:1/?retryWrites=true",
    ],
)
def test_connect_forces_retry_writes_off_and_bounds_timeouts(url: str) -> None:
    with connect(url, retryWrites=True) as client:
        assert client.options.retry_writes is False
        assert client.options.server_selection_timeout == 5
        assert client.options.pool_options.connect_timeout == 5
        assert client.options.pool_options.socket_timeout == 30
        assert client.write_concern.document == {"j": True}
