"""What a worker does with a round's entries: ``Delivery`` (one entry and its
outcome), the ``Processor`` protocol, and ``TaskProcessor``, which runs each
entry's registered handler (or a built-in one)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ledger.tasks import Priority

from . import keys
from .codec import EventMessage, Message, event_data, message_id
from .errors import DecodeError, Retry
from .handlers import NO_DATABASE, BoundDBManager, Handler
from .outcomes import NotRun, Outcome
from .registry import EventRecorder, HandlerRegistry

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


class TaskProcessor:
    """Runs each entry's handler: registered ones, else the built-ins."""

    def __init__(
        self, registry: HandlerRegistry, db: BoundDBManager | None, allowed: frozenset[str]
    ) -> None:
        self.registry = registry
        self.db = db
        self.allowed = allowed

    def process(self, deliveries: Sequence[Delivery]) -> None:
        """Run each delivery's handler in order. Ledger events that are only to be
        recorded are written together (one insert per collection) before the next
        handler runs, so every handler still sees what came before it."""
        to_record: dict[str, list[tuple[Delivery, Mapping[str, Any]]]] = defaultdict(list)
        for d in deliveries:
            message = d.message
            assert message is not None and not isinstance(message, DecodeError)
            try:
                handler, data = self._handler_for(message)
            except Exception as exc:
                d.error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
                continue
            if isinstance(handler, EventRecorder) and self.db is not None:
                to_record[handler.collection].append((d, data))
                continue
            self._record(to_record)
            self._run(d, handler, data)
        self._record(to_record)

    def _record(self, to_record: dict[str, list[tuple[Delivery, Mapping[str, Any]]]]) -> None:
        for collection, items in to_record.items():
            try:
                assert self.db is not None
                self.db.insert_all(collection, [{**data, "_id": _id(d)} for d, data in items])
                for d, _ in items:
                    d.done = True
            except Exception:  # one at a time, so one bad event fails alone
                for d, data in items:
                    self._run(d, EventRecorder(collection), data)
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
            d.error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]

    def _handler_for(self, message: Message) -> tuple[Handler, Mapping[str, Any]]:
        if isinstance(message, EventMessage):
            return self.registry.resolve_event(message.event.kind), event_data(message.event)
        found = self.registry.resolve_task(message.task_type, message.data, self.allowed)
        if found is None:
            raise LookupError(f"no handler registered for task type {message.task_type!r}")
        return found, message.data


def _id(d: Delivery) -> str:
    """The delivery's event id or task id (it names what its handler writes)."""
    assert d.message is not None and not isinstance(d.message, DecodeError)
    return message_id(d.message)
