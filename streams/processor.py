"""What a worker does with a round's entries: ``Delivery`` (one entry and its
outcome), the ``Processor`` protocol, and ``TaskProcessor``, which runs each
entry's registered handler (or a built-in one).

Order. A round's entries come in priority then stream order, and every handler
sees what came before it: when a handler is called, every earlier entry of the
round has been handled. Writes that only insert a document under the entry's own
id (recorded ledger events, and ``insert`` tasks of the default DB handler
without an ``_id``) are gathered per collection and written in one
``insert_all`` before the next handler is called, one by one if that fails.

Batch handlers (``HandlerRegistry.register_batch``) get a run of consecutive
entries of their task type, up to ``max_batch``, in order, in one call; any other
handler's entry ends the run (it must see the run's effects), so nothing is
reordered across task types. Such a call sees everything before its last item
(its own items it gets as a list); gathered inserts that came between its items,
or just after them, may already be written too. A round holds at most
``WorkerConfig.batch`` entries (plus reclaimed ones), so a call gets at most that
many. Results map to items: True is done, False fails that item alone (it is
retried or dead-lettered on its own, the others are acknowledged and never run
again); an exception, ``Retry``, or a result that is not a list of exactly one
bool per item fails every item of the call. Its ``db_manager`` binds per item
(``for_item(i)``), see ``streams.handlers``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ledger.tasks import Priority, check_db_task, check_not_event_id

from . import keys
from .codec import EventMessage, Message, event_data, message_id
from .errors import DecodeError, Retry
from .handlers import NO_DATABASE, BoundDBManager, DBManager, Handler
from .outcomes import NotRun, Outcome
from .registry import EVENT_TASK_TYPES, BatchSpec, DefaultDBHandler, EventRecorder, HandlerRegistry

MAX_ERROR_CHARS = 2000


@dataclass(slots=True)
class Delivery:
    """One entry being processed; a ``Processor`` sets ``done`` or ``error``."""

    partition: keys.Partition
    level: Priority
    entry_id: str
    fields: Mapping[bytes, bytes]
    attempts: int = 0
    not_run: NotRun | None = None
    """Set instead of ``attempts`` when begin.lua says the entry must not run."""
    message: Message | DecodeError | None = None
    done: bool = False
    error: str | None = None
    retry_delay_ms: int | None = None
    outcome: Outcome | None = None


class Processor(Protocol):
    """What a consumer does with a round's entries (in priority order).

    Set ``d.done = True`` for each entry handled, or ``d.error`` (and optionally
    ``d.retry_delay_ms``) for each that failed; raising fails every entry not
    yet done. Entries are never handed over undecodable or over their attempts.
    """

    def process(self, deliveries: Sequence[Delivery]) -> None: ...


@dataclass(slots=True)
class _Insert:
    """A gathered write: ``document`` goes in under the entry's id; if the
    collection's ``insert_all`` fails, ``handler(data)`` runs alone instead."""

    collection: str
    d: Delivery
    document: Mapping[str, Any]
    handler: Handler
    data: Mapping[str, Any]


@dataclass(slots=True)
class _Run:
    """Consecutive entries of one batch-handled task type (at most ``max_batch``)."""

    task_type: str
    spec: BatchSpec
    items: list[tuple[Delivery, Mapping[str, Any]]] = field(default_factory=list)


class TaskProcessor:
    """Runs each entry's handler: registered ones, else the built-ins."""

    def __init__(
        self, registry: HandlerRegistry, db: BoundDBManager | None, allowed: frozenset[str]
    ) -> None:
        self.registry = registry
        self.db = db
        self.allowed = allowed

    def process(self, deliveries: Sequence[Delivery]) -> None:
        """Run each delivery's handler in order (see the module's doc): gathered
        inserts are written, and a batch run is called, before the next other
        handler runs, so every handler still sees what came before it."""
        to_record: dict[str, list[_Insert]] = defaultdict(list)
        run: _Run | None = None
        for d in deliveries:
            message = d.message
            assert message is not None and not isinstance(message, DecodeError)
            try:
                found = self._handler_for(d, message)
            except Exception as exc:
                d.error = _error(exc)
                continue
            if isinstance(found, _Insert):
                to_record[found.collection].append(found)
                continue
            if isinstance(found, _Run):
                if (
                    run is not None
                    and run.task_type == found.task_type
                    and len(run.items) < run.spec.max_batch
                ):
                    run.items += found.items
                    continue
                self._flush(to_record, run)
                run = found
                continue
            self._flush(to_record, run)
            run = None
            self._run(d, *found)
        self._flush(to_record, run)

    def _flush(self, to_record: dict[str, list[_Insert]], run: _Run | None) -> None:
        self._record(to_record)
        if run is not None:
            self._run_batch(run)

    def _record(self, to_record: dict[str, list[_Insert]]) -> None:
        for collection, items in to_record.items():
            try:
                assert self.db is not None
                self.db.insert_all(collection, [{**i.document, "_id": _id(i.d)} for i in items])
                for i in items:
                    i.d.done = True
            except Exception:  # one at a time, so one bad insert fails alone
                for i in items:
                    self._run(i.d, i.handler, i.data)
        to_record.clear()

    def _run(self, d: Delivery, handler: Handler, data: Mapping[str, Any]) -> None:
        try:
            db = self.db.for_event(_id(d)) if self.db else NO_DATABASE
            if handler(data, db) is False:
                raise RuntimeError("handler returned False")
            d.done = True
        except Retry as exc:
            d.error, d.retry_delay_ms = str(exc), exc.delay_ms
        except Exception as exc:
            d.error = _error(exc)

    def _run_batch(self, run: _Run) -> None:
        """One call of a batch handler; its results (or its failure) map to the items."""
        ds = [d for d, _ in run.items]
        db = BatchDB(self.db, [_id(d) for d in ds])
        try:
            results = run.spec.handler([data for _, data in run.items], db)
        except Retry as exc:
            for d in ds:
                d.error, d.retry_delay_ms = str(exc), exc.delay_ms
            return
        except Exception as exc:
            error = _error(exc)
            for d in ds:
                d.error = error
            return
        problem = _check_results(results, len(ds))
        if problem is not None:
            error = f"batch handler for {run.task_type!r} {problem}"[:MAX_ERROR_CHARS]
            for d in ds:
                d.error = error
            return
        for d, ok in zip(ds, results, strict=True):
            if ok:
                d.done = True
            else:
                d.error = "batch handler returned False for this item"

    def _handler_for(
        self, d: Delivery, message: Message
    ) -> tuple[Handler, Mapping[str, Any]] | _Insert | _Run:
        """What runs the entry: (handler, data) to call now, an insert to gather, or
        a one-item batch run."""
        if isinstance(message, EventMessage):
            data = event_data(message.event)
            task_type = EVENT_TASK_TYPES[message.event.kind]
            spec = self.registry.get_batch(task_type)
            if spec is not None:
                return _Run(task_type, spec, [(d, data)])
            handler = self.registry.resolve_event(message.event.kind)
            if isinstance(handler, EventRecorder) and self.db is not None:
                return _Insert(handler.collection, d, data, handler, data)
            return handler, data
        spec = self.registry.get_batch(message.task_type)
        if spec is not None:
            return _Run(message.task_type, spec, [(d, message.data)])
        found = self.registry.resolve_task(message.task_type, message.data, self.allowed)
        if found is None:
            raise LookupError(f"no handler registered for task type {message.task_type!r}")
        if isinstance(found, DefaultDBHandler) and self.db is not None:
            task = check_db_task(message.data, found.allowed)
            if task.operation == "insert" and task.data is not None and "_id" not in task.data:
                # the id a bound manager would give it: redelivered, it is already there
                return _Insert(task.collection, d, task.data, found, message.data)
        return found, message.data


class BatchDB:
    """A batch handler's ``db_manager`` (``streams.handlers.BatchDBManager``).

    Not bound to one task: a failed item is retried alone, so a batch is never
    redelivered whole and an id derived from the batch would not be stable. Each
    item binds on its own instead, ``for_item(i)`` being the manager a single
    handler of that item would get (inserts keyed by its task id, idempotent on
    redelivery); ``task_ids`` names the items for writes keyed elsewhere (e.g.
    ``insert_all`` with ``_id`` = task id, or a Redis set of done ids). Unbound
    ``insert``/``update``/``delete`` are refused: they could not be exactly-once.
    """

    def __init__(self, db: BoundDBManager | None, task_ids: Sequence[str]) -> None:
        self._db = db
        self._ids = tuple(task_ids)
        self._bound: dict[int, DBManager] = {}

    @property
    def task_ids(self) -> Sequence[str]:
        return self._ids

    def for_item(self, index: int) -> DBManager:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError("for_item takes the item's index (an int)")
        if not 0 <= index < len(self._ids):
            raise IndexError(f"item {index} is not in this batch of {len(self._ids)}")
        if index not in self._bound:
            self._bound[index] = (
                self._db.for_event(self._ids[index]) if self._db is not None else NO_DATABASE
            )
        return self._bound[index]

    def insert_all(self, collection: str, documents: Sequence[Mapping[str, Any]]) -> None:
        """Documents with their own ``_id`` in one write (see ``BatchDBManager``). As
        with ``insert``, an ``_id`` of a recorded ledger event's form is refused in
        the event-record collections, unless it is one of this batch's own ids."""
        if self._db is None:
            raise RuntimeError("db_manager.insert_all: this worker has no database configured")
        own = set(self._ids)
        for doc in documents:
            if isinstance(doc, Mapping) and doc.get("_id") not in own:
                check_not_event_id(collection, doc.get("_id"), "document")
        self._db.insert_all(collection, documents)

    def find_one(self, collection: str, filter: Mapping[str, Any]) -> dict[str, Any] | None:
        return self._reader().find_one(collection, filter)

    def find_many(
        self, collection: str, filter: Mapping[str, Any] | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        return self._reader().find_many(collection, filter, limit)

    def insert(self, collection: str, document: Mapping[str, Any]) -> str:
        raise _unbound("insert")

    def update(self, collection: str, filter: Mapping[str, Any], data: Mapping[str, Any]) -> int:
        raise _unbound("update")

    def delete(self, collection: str, filter: Mapping[str, Any]) -> int:
        raise _unbound("delete")

    def _reader(self) -> DBManager:
        """Reads do not depend on the binding: any item's manager will do."""
        return self.for_item(0) if self._ids else NO_DATABASE


def _unbound(op: str) -> RuntimeError:
    return RuntimeError(
        f"db_manager.{op}: a batch handler's db_manager is not bound to one task; use "
        f"db_manager.for_item(i).{op}(...) (exactly-once per item's task id)"
    )


def _check_results(results: object, n: int) -> str | None:
    """Why ``results`` is not one bool per item (None if it is)."""
    if not isinstance(results, list | tuple):
        return f"must return a list of {n} bools, got {type(results).__name__}"
    if len(results) != n:
        return f"returned {len(results)} results for {n} items"
    for i, ok in enumerate(results):
        if not isinstance(ok, bool):
            return f"result [{i}] is {type(ok).__name__}, not bool"
    return None


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]


def _id(d: Delivery) -> str:
    """The delivery's event id or task id (it names what its handler writes)."""
    assert d.message is not None and not isinstance(d.message, DecodeError)
    return message_id(d.message)
