"""Task handlers by task type, and the built-in ones.

``default_registry`` is process-wide so that modules imported by
``ledger worker --import myapp.handlers`` can call ``register_handler`` on any
``QueueManager`` and the worker sees their handlers.

Built-ins, used when nothing is registered for a type:
- ledger events (task types ``user_registration``, ``credit_purchase``,
  ``credit_usage``, ``credit_update``) are recorded in the original system's
  collections, one document per event, its ``_id`` the event id;
- tasks in the original ``{operation, collection, data, filter}`` form go to the
  default DB handler (allow-listed collections, no ``$``-keys).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ledger.errors import ValidationError
from ledger.tasks import TASK_TYPE_RE, DbTask, check_db_task

from .handlers import DBManager, Handler

EVENT_TASK_TYPES: dict[str, str] = {
    "user_registered": "user_registration",
    "credits_purchased": "credit_purchase",
    "credits_used": "credit_usage",
    "credits_adjusted": "credit_update",
}
EVENT_COLLECTIONS: dict[str, str] = {
    "user_registration": "users",
    "credit_purchase": "credit_purchases",
    "credit_usage": "credit_usage",
    "credit_update": "credit_updates",
}


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, task_type: str, handler: Handler) -> None:
        if not isinstance(task_type, str) or not TASK_TYPE_RE.match(task_type):
            raise ValidationError("task_type", "task_type must match " + TASK_TYPE_RE.pattern)
        if not callable(handler):
            raise ValidationError("handler", "handler must be callable")
        self._handlers[task_type] = handler

    def get(self, task_type: str) -> Handler | None:
        return self._handlers.get(task_type)

    def types(self) -> list[str]:
        return sorted(self._handlers)

    def resolve_task(
        self, task_type: str, data: Mapping[str, Any], allowed: frozenset[str]
    ) -> Handler | None:
        """The handler for a task: registered, else the default DB handler if it fits."""
        handler = self.get(task_type)
        if handler is None and "operation" in data and "collection" in data:
            return DefaultDBHandler(allowed)
        return handler

    def resolve_event(self, kind: str) -> Handler:
        task_type = EVENT_TASK_TYPES[kind]
        return self.get(task_type) or EventRecorder(EVENT_COLLECTIONS[task_type])


default_registry = HandlerRegistry()


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
