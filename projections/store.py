"""The MongoDB side: connecting, read-model collection names, and ``MongoDBManager``.

``MongoDBManager`` is what a task handler receives as ``db_manager`` (it
implements ``streams.handlers.DBManager`` and ``BoundDBManager``). Task data is
untrusted, so every call is checked before it reaches the driver:

- only collections in the allow-list, and never a read model or ``system.*``;
- no key (nor dotted path part, like ``items.$``) starting with ``$`` anywhere
  in a filter, document or update: no operator injection, and ``update``
  always means ``$set`` of plain fields;
- ``update`` and ``delete`` touch one document and need a non-empty filter;
- ``find_many`` returns at most ``MAX_FIND_LIMIT`` documents;
- recorded ledger events are unforgeable: in the collections the workers
  record them in (``ledger.tasks.EVENT_RECORD_COLLECTIONS``, ``_id`` = event
  id ``"<user_id>:<version>"``) an insert may not name an ``_id`` of that form,
  a filter may not name one, and ``update``/``delete`` never pick such a
  document (a filter that matches nothing else is refused).

Exactly-once effect: a manager bound to a delivery (``for_event``) gives the
n-th id-less document of that delivery the id ``event_id`` (n = 1) or
``f"{event_id}:{n}"``, so a redelivered handler finds its inserts already done.
Its n-th ``update`` (or ``delete``) of a collection resolves its target once:
the first match's ``_id`` is recorded in ``task_targets`` under
``"<event_id>|<op>|<collection>|<n>"`` before anything is changed, then only
that ``_id`` is acted on. A redelivery, even after a crash between the two
steps, reuses the record, so an update whose ``$set`` changes a filtered
field, or a delete, never reaches a second document. Records expire after
``TARGET_TTL_S``.
Writes ask for the journal (``j: true``) because the worker acknowledges the
delivery once the handler returns: an unjournaled write can vanish if the
server is killed right after it answered.

Driver connection errors become ``StoreUnavailable`` (without the driver's
exception chained, so no topology details leak to callers).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

import pymongo
from bson.errors import InvalidDocument
from bson.objectid import ObjectId
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
)
from pymongo.write_concern import WriteConcern

from ledger.errors import Conflict, Error, ValidationError
from ledger.tasks import EVENT_ID_RE, EVENT_RECORD_COLLECTIONS, check_not_event_id

__all__ = [
    "BALANCES",
    "CHECKPOINTS",
    "CREDIT_SCORES",
    "EVENTS",
    "MAX_FIND_LIMIT",
    "READ_MODELS",
    "TASK_TARGETS",
    "DuplicateDocument",
    "EventDBManager",
    "MongoDBManager",
    "StoreUnavailable",
    "connect",
]

BALANCES = "balances"
CREDIT_SCORES = "credit_scores"
EVENTS = "events"
CHECKPOINTS = "checkpoints"
READ_MODELS = frozenset({BALANCES, CREDIT_SCORES, EVENTS, CHECKPOINTS})
TASK_TARGETS = "task_targets"
"""Where a bound manager records the document each update/delete resolved to."""
TARGET_TTL_S: Final = 7 * 24 * 3600

log = logging.getLogger(__name__)

MAX_FIND_LIMIT = 1000
_INT64 = (-(2**63), 2**63 - 1)

Document = dict[str, Any]
"""A MongoDB document as pymongo returns it (the read models' and handlers' collections)."""


DUPLICATE_KEY = 11000
"""MongoDB's error code for a unique index clash."""


class StoreUnavailable(Error):
    """The Mongo server could not be reached in time; the caller may retry later."""

    code = "unavailable"


class DuplicateDocument(Conflict):
    """An insert named an ``_id`` (or other unique key) that is already taken."""

    code = "duplicate_document"

    def __init__(self, collection: str, doc_id: object) -> None:
        super().__init__(f"a document with _id {doc_id!r} already exists in {collection!r}")
        self.collection = collection
        self.doc_id = doc_id


def connect(url: str, **kw: Any) -> pymongo.MongoClient[Document]:
    """Open a client with bounded timeouts and ``retryWrites=false`` whatever the URL says.

    Timeouts default to bounded values unless the URL sets them. Retryable
    writes are off because the embedded Mongo-wire server slows down
    with every write when they are on. ``journal=True`` is the default so an
    acknowledged write survives a server crash; pass ``journal=False`` to trade
    that for speed. Dates come back timezone-aware (UTC). Other keyword
    arguments go to ``MongoClient``.
    """
    in_url = url.lower()
    defaults = {
        "serverSelectionTimeoutMS": 5_000,
        "connectTimeoutMS": 5_000,
        "socketTimeoutMS": 30_000,
    }
    options: dict[str, Any] = {
        **{k: v for k, v in defaults.items() if k.lower() + "=" not in in_url},
        "journal": True,
        "tz_aware": True,
        **kw,
        "retryWrites": False,
    }
    return pymongo.MongoClient(url, **options)


class MongoDBManager:
    """The original system's ``db_manager`` over one database, limited to ``allowed``."""

    def __init__(self, db: Database[Document], allowed: frozenset[str]) -> None:
        self._db = db
        self._allowed = frozenset(allowed)
        # Keep the caller's w (e.g. "majority") and add the journal.
        concern = {**db.write_concern.document, "j": True}
        concern.pop("fsync", None)  # j and fsync are mutually exclusive
        self._write_concern = WriteConcern(**concern)
        self._shared: dict[str, bool] = {"ttl_index": False}

    @property
    def allowed(self) -> frozenset[str]:
        """The collections this manager may touch (read models and system.* never)."""
        return frozenset(c for c in self._allowed if _permitted(c))

    def for_event(self, event_id: str) -> EventDBManager:
        """A manager for one delivery of ``event_id``, whose inserts are idempotent."""
        if not isinstance(event_id, str) or not event_id:
            raise ValidationError("event_id", "event_id must be a non-empty string")
        bound = EventDBManager(self._db, self._allowed, event_id)
        bound._shared = self._shared  # the TTL index is made once per manager
        return bound

    def find_one(self, collection: str, filter: Mapping[str, Any]) -> Document | None:
        coll = self._collection(collection)
        query = _checked("filter", filter)
        with _translated():
            found = coll.find_one(query)
        return None if found is None else dict(found)

    def find_many(
        self, collection: str, filter: Mapping[str, Any] | None = None, limit: int = 100
    ) -> list[Document]:
        coll = self._collection(collection)
        query = _checked("filter", {} if filter is None else filter)
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise ValidationError("limit", "limit must be an integer")
        if not 1 <= limit <= MAX_FIND_LIMIT:
            raise ValidationError("limit", f"limit must be between 1 and {MAX_FIND_LIMIT}")
        with _translated():
            # Sorted by _id so that a limit gives the same page every time.
            return [dict(doc) for doc in coll.find(query).sort("_id", 1).limit(limit)]

    def insert(self, collection: str, document: Mapping[str, Any]) -> str:
        """Insert one document and return its ``_id`` as a string."""
        coll = self._collection(collection, write=True)
        doc = _checked("document", document)
        generated = "_id" not in doc
        if generated:
            doc["_id"] = self._next_id()  # the delivery's own id: never a forgery
        else:
            check_not_event_id(collection, doc["_id"], "document")
        try:
            with _translated("document"):
                coll.insert_one(doc)
        except DuplicateKeyError:
            if generated and self._already_done(coll, doc["_id"]):
                return str(doc["_id"])
            raise DuplicateDocument(collection, doc["_id"]) from None
        return str(doc["_id"])

    def insert_all(self, collection: str, documents: Sequence[Mapping[str, Any]]) -> None:
        """Insert documents that carry their own ``_id`` in one write (ledger events
        recorded by the workers); one whose ``_id`` is already there counts as
        inserted, a clash on another unique index is ``DuplicateDocument``."""
        coll = self._collection(collection, write=True)
        docs = [_checked("document", d) for d in documents]
        if any("_id" not in d for d in docs):
            raise ValidationError("document", "every document needs its _id")
        if not docs:
            return
        try:
            with _translated("document"):
                coll.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            clashes = [docs[e["index"]]["_id"] for e in errors]
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise StoreUnavailable(
                    f"insert into {collection!r} failed: {errors[0].get('errmsg', 'write error')}"
                ) from None
            with _translated():
                there = {d["_id"] for d in coll.find({"_id": {"$in": clashes}}, {"_id": 1})}
            missing = [i for i in clashes if i not in there]
            if missing:
                raise DuplicateDocument(collection, missing[0]) from None

    def update(self, collection: str, filter: Mapping[str, Any], data: Mapping[str, Any]) -> int:
        """``$set`` the fields of ``data`` on the first match (by ``_id``); returns the
        match count."""
        coll = self._collection(collection, write=True)
        query = _checked("filter", filter, non_empty=True)
        fields = _checked("data", data, non_empty=True)
        for key in fields:
            if key == "_id" or key.startswith("_id."):
                raise ValidationError("data", "update data must not change _id")
        check_not_event_id(collection, query.get("_id"), "filter")
        found, target = self._target("update", collection, query)
        if not found:
            return 0
        try:
            with _translated("data"):
                result = coll.update_one({"_id": target}, {"$set": fields})
        except DuplicateKeyError:
            raise DuplicateDocument(collection, target) from None
        return result.matched_count

    def delete(self, collection: str, filter: Mapping[str, Any]) -> int:
        """Delete the first match (by ``_id``); returns the number deleted (0 or 1)."""
        coll = self._collection(collection, write=True)
        query = _checked("filter", filter, non_empty=True)
        check_not_event_id(collection, query.get("_id"), "filter")
        found, target = self._target("delete", collection, query)
        if not found:
            return 0
        with _translated():
            return coll.delete_one({"_id": target}).deleted_count

    # -- internals --------------------------------------------------------------

    def _next_id(self) -> object:
        return ObjectId()

    def _already_done(self, coll: Collection[Document], doc_id: object) -> bool:
        return False

    def _target(self, op: str, collection: str, query: Document) -> tuple[bool, object]:
        """(found, _id) of the document ``op`` acts on (unbound: the first match now)."""
        return _first_writable(self._db.get_collection(collection), collection, query)

    def _collection(self, name: object, *, write: bool = False) -> Collection[Document]:
        if not isinstance(name, str) or not name:
            raise ValidationError("collection", "collection must be a non-empty string")
        if name in READ_MODELS:
            raise ValidationError("collection", f"{name!r} is a read model: tasks cannot touch it")
        if name == TASK_TARGETS:
            raise ValidationError(
                "collection", f"{name!r} is kept by the workers: tasks cannot touch it"
            )
        if name.startswith("system."):
            raise ValidationError("collection", f"{name!r} is a system collection")
        if name not in self._allowed:
            raise ValidationError("collection", f"collection {name!r} is not in the allow-list")
        if write:
            return self._db.get_collection(name, write_concern=self._write_concern)
        return self._db.get_collection(name)


class EventDBManager(MongoDBManager):
    """A ``MongoDBManager`` bound to one delivery: id-less inserts get ids from the event id."""

    def __init__(self, db: Database[Document], allowed: frozenset[str], event_id: str) -> None:
        super().__init__(db, allowed)
        self.event_id = event_id
        self._inserted = 0
        self._calls: dict[tuple[str, str], int] = {}

    def _next_id(self) -> object:
        self._inserted += 1
        return self.event_id if self._inserted == 1 else f"{self.event_id}:{self._inserted}"

    def _already_done(self, coll: Collection[Document], doc_id: object) -> bool:
        # The duplicate may be another unique index; only our own _id means "done".
        with _translated():
            return coll.find_one({"_id": doc_id}, projection={"_id": 1}) is not None

    def _target(self, op: str, collection: str, query: Document) -> tuple[bool, object]:
        """Resolve once per delivery: the record written before acting decides, so a
        redelivery (or a twin delivery racing this one) acts on the same document."""
        n = self._calls[(op, collection)] = self._calls.get((op, collection), 0) + 1
        key = f"{self.event_id}|{op}|{collection}|{n}"
        records = self._db.get_collection(TASK_TARGETS, write_concern=self._write_concern)
        with _translated():
            record = records.find_one({"_id": key})
        if record is None:
            found, target = super()._target(op, collection, query)
            self._ensure_ttl(records)
            record = {"_id": key, "found": found, "target": target, "at": datetime.now(UTC)}
            try:
                with _translated():
                    records.insert_one(record)
            except DuplicateKeyError:  # another delivery of this task recorded first
                with _translated():
                    record = records.find_one({"_id": key})
                if record is None:
                    raise StoreUnavailable(f"target record {key!r} vanished") from None
        return bool(record["found"]), record.get("target")

    def _ensure_ttl(self, records: Collection[Document]) -> None:
        """Expire old records (housekeeping: a failure to make the index is only logged)."""
        if not self._shared["ttl_index"]:
            try:
                with _translated():
                    records.create_index("at", expireAfterSeconds=TARGET_TTL_S, name="expire")
            except OperationFailure as exc:
                log.warning("%s: no TTL index (%s); records are kept", TASK_TARGETS, exc)
            self._shared["ttl_index"] = True


def _permitted(name: str) -> bool:
    return name not in READ_MODELS and name != TASK_TARGETS and not name.startswith("system.")


_NOT_AN_EVENT = {"_id": {"$not": EVENT_ID_RE}}
"""Matches the documents of an event-record collection that are not recorded events."""


def _first_writable(
    coll: Collection[Document], collection: str, query: Document
) -> tuple[bool, object]:
    """(found, _id) of the first match by ``_id`` that a task may change: in an
    event-record collection, recorded events are skipped; a filter that matches
    only those is refused, so the task fails with the reason."""
    guarded = {"$and": [query, _NOT_AN_EVENT]} if collection in EVENT_RECORD_COLLECTIONS else query
    with _translated():
        found = coll.find_one(guarded, projection={"_id": 1}, sort=[("_id", 1)])
        if (
            found is None
            and guarded is not query
            and coll.find_one(query, projection={"_id": 1}) is not None
        ):
            raise ValidationError(
                "filter",
                f"the filter matches only ledger events recorded in "
                f"{collection!r} (_id '<user_id>:<version>'), which "
                "tasks cannot change",
            )
    return (False, None) if found is None else (True, found["_id"])


def _checked(field: str, value: object, *, non_empty: bool = False) -> Document:
    """A plain-dict copy of ``value`` after refusing ``$``-keys at any depth."""
    if not isinstance(value, Mapping):
        raise ValidationError(field, f"{field} must be an object")
    if non_empty and not value:
        raise ValidationError(field, f"{field} must not be empty")
    _refuse_operators(field, value, field)
    return dict(value)


def _refuse_operators(field: str, value: object, path: str) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(field, f"{path}: keys must be strings, got {key!r}")
            if any(part.startswith("$") for part in key.split(".")):
                raise ValidationError(
                    field, f"{path}.{key}: keys starting with '$' (Mongo operators) are not allowed"
                )
            if "\x00" in key:
                raise ValidationError(field, f"{path}: keys must not contain NUL")
            _refuse_operators(field, item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _refuse_operators(field, item, f"{path}[{index}]")
    elif isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
        raise ValidationError(field, f"{path}: integer out of the int64 range")


@contextmanager
def _translated(field: str | None = None) -> Iterator[None]:
    """Driver errors -> our errors, unchained so no driver internals leak."""
    try:
        yield
    except ConnectionFailure as exc:
        raise StoreUnavailable(f"MongoDB is unavailable ({type(exc).__name__})") from None
    except InvalidDocument as exc:
        raise ValidationError(field, f"cannot be stored: {exc}") from None


def ensure_indexes(db: Database[Document]) -> None:
    """Indexes the readers need: an account's archived events by version."""
    db[EVENTS].create_index([("user_id", 1), ("version", 1)], name="user_version")
