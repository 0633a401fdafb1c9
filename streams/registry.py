"""Task handlers by task type, and the built-in ones.

``default_registry`` is process-wide so that modules imported by
``ledger worker --import myapp.handlers`` can register at import time (the
``handler`` / ``batch_handler`` decorators, ``default_registry.register`` /
``register_batch``, or ``register_handler`` / ``register_batch_handler`` on any
``QueueManager`` built with the default registry) and the worker sees their
handlers.

Built-ins, used when nothing is registered for a type:
- ledger events (task types ``user_registration``, ``credit_purchase``,
  ``credit_usage``, ``credit_update``) are recorded in the original system's
  collections, one document per event, its ``_id`` the event id; credit holds
  too: ``credit_hold``, ``credit_hold_release`` and ``credit_hold_expiry`` in
  ``credit_holds``, and a capture (``credit_hold_capture``: credits used) in
  ``credit_usage``, its data naming the ``hold_id`` and the ``released`` rest;
- tasks in the original ``{operation, collection, data, filter}`` form go to the
  default DB handler (allow-listed collections, no ``$``-keys).

A task type has one handler: a single one (``register``, ``handler``) or a batch
one (``register_batch``, ``batch_handler``). Registering again with the same
kind replaces the handler; with the other kind it is refused
(``ValidationError``): the two are called differently.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ledger.errors import ValidationError
from ledger.tasks import TASK_TYPE_RE, DbTask, check_db_task

from .handlers import BatchHandler, DBManager, Handler

EVENT_TASK_TYPES: dict[str, str] = {
    "user_registered": "user_registration",
    "credits_purchased": "credit_purchase",
    "credits_used": "credit_usage",
    "credits_adjusted": "credit_update",
    "credits_held": "credit_hold",
    "hold_captured": "credit_hold_capture",
    "hold_released": "credit_hold_release",
    "hold_expired": "credit_hold_expiry",
}
EVENT_COLLECTIONS: dict[str, str] = {
    "user_registration": "users",
    "credit_purchase": "credit_purchases",
    "credit_usage": "credit_usage",
    "credit_update": "credit_updates",
    "credit_hold": "credit_holds",
    "credit_hold_capture": "credit_usage",
    "credit_hold_release": "credit_holds",
    "credit_hold_expiry": "credit_holds",
}


DEFAULT_MAX_BATCH = 100
MAX_BATCH_LIMIT = 10_000
"""The largest ``max_batch`` accepted (a round never holds that many anyway)."""


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """A registered batch handler and the most items it takes per call."""

    handler: BatchHandler
    max_batch: int


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._batch: dict[str, BatchSpec] = {}

    def register(self, task_type: str, handler: Handler) -> None:
        _check_type(task_type)
        if not callable(handler):
            raise ValidationError("handler", "handler must be callable")
        if task_type in self._batch:
            raise ValidationError(
                "task_type", f"task type {task_type!r} already has a batch handler"
            )
        self._handlers[task_type] = handler

    def register_batch(
        self, task_type: str, handler: BatchHandler, max_batch: int = DEFAULT_MAX_BATCH
    ) -> None:
        """``handler(list_of_task_data, db_manager) -> list[bool]`` runs up to
        ``max_batch`` tasks of ``task_type`` per call (see ``streams.processor``)."""
        _check_type(task_type)
        if not callable(handler):
            raise ValidationError("handler", "handler must be callable")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int):
            raise ValidationError("max_batch", "max_batch must be an integer")
        if not 1 <= max_batch <= MAX_BATCH_LIMIT:
            raise ValidationError("max_batch", f"max_batch must be between 1 and {MAX_BATCH_LIMIT}")
        if task_type in self._handlers:
            raise ValidationError(
                "task_type", f"task type {task_type!r} already has a single handler"
            )
        self._batch[task_type] = BatchSpec(handler, max_batch)

    def get(self, task_type: str) -> Handler | None:
        """The single handler registered for ``task_type`` (None for a batch one)."""
        return self._handlers.get(task_type)

    def get_batch(self, task_type: str) -> BatchSpec | None:
        return self._batch.get(task_type)

    def registered(self, task_type: str) -> bool:
        """Whether ``task_type`` has a handler of either kind."""
        return task_type in self._handlers or task_type in self._batch

    def types(self) -> list[str]:
        return sorted({*self._handlers, *self._batch})

    def resolve_task(
        self, task_type: str, data: Mapping[str, Any], allowed: frozenset[str]
    ) -> Handler | None:
        """The handler for a task: registered, else the default DB handler if it fits."""
        handler = self.get(task_type)
        if (
            handler is None
            and task_type not in self._batch
            and "operation" in data
            and "collection" in data
        ):
            return DefaultDBHandler(allowed)
        return handler

    def resolve_event(self, kind: str) -> Handler:
        task_type = EVENT_TASK_TYPES[kind]
        return self.get(task_type) or EventRecorder(EVENT_COLLECTIONS[task_type])


default_registry = HandlerRegistry()


def _check_type(task_type: object) -> None:
    if not isinstance(task_type, str) or not TASK_TYPE_RE.match(task_type):
        raise ValidationError("task_type", "task_type must match " + TASK_TYPE_RE.pattern)


class DefaultDBHandler:
    """Runs an original ``{operation, collection, data, filter}`` task."""

    def __init__(self, allowed: frozenset[str]) -> None:
        self.allowed = allowed

    def __call__(self, data: Mapping[str, Any], db_manager: DBManager) -> bool:
        task: DbTask = check_db_task(data, self.allowed)
        if task.operation == "insert":
            db_manager.insert(task.collection, task.data or {})
        elif task.operation == "update":
            db_manager.update(task.collection, task.filter or {}, task.data or {})
        else:
            db_manager.delete(task.collection, task.filter or {})
        return True


class EventRecorder:
    """Records a ledger event in its original collection (idempotent by event id)."""

    def __init__(self, collection: str) -> None:
        self.collection = collection

    def __call__(self, data: Mapping[str, Any], db_manager: DBManager) -> bool:
        db_manager.insert(self.collection, dict(data))
        return True


def handler(
    task_type: str, registry: HandlerRegistry = default_registry
) -> Callable[[Handler], Handler]:
    """Decorator form of ``register_handler``."""

    def register(fn: Handler) -> Handler:
        registry.register(task_type, fn)
        return fn

    return register


def batch_handler(
    task_type: str, max_batch: int = DEFAULT_MAX_BATCH, registry: HandlerRegistry = default_registry
) -> Callable[[BatchHandler], BatchHandler]:
    """Decorator form of ``register_batch_handler``."""

    def register(fn: BatchHandler) -> BatchHandler:
        registry.register_batch(task_type, fn, max_batch)
        return fn

    return register
