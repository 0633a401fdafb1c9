"""The seams a task handler sees: ``Handler`` and the ``DBManager`` it is given.

Handlers written for the original system keep their signature
``handler(data, db_manager) -> bool``. ``db_manager`` is bound to the delivery
being processed: its ``insert`` gives a document without ``_id`` an id derived
from the event id, so a redelivered task inserts nothing twice.

Batch handlers, ``handler(list_of_task_data, db_manager) -> list[bool]``, get a
``BatchDBManager``: not bound to one task (a batch is not redelivered whole,
only its failed items are), it binds per item (``for_item(i)``, the same manager
as a single handler of item ``i`` would get) and names each item's task id
(``task_ids``), so that effects keyed by task id stay exactly-once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class DBManager(Protocol):
    """The original system's database helper, over the read-model database."""

    def find_one(self, collection: str, filter: Mapping[str, Any]) -> dict[str, Any] | None: ...

    def find_many(
        self, collection: str, filter: Mapping[str, Any] | None = None, limit: int = 100
    ) -> list[dict[str, Any]]: ...

    def insert(self, collection: str, document: Mapping[str, Any]) -> str:
        """Insert one document and return its ``_id`` (idempotent per delivery)."""
        ...

    def update(self, collection: str, filter: Mapping[str, Any], data: Mapping[str, Any]) -> int:
        """``$set`` the fields of ``data`` on the first match; returns the match count."""
        ...

    def delete(self, collection: str, filter: Mapping[str, Any]) -> int:
        """Delete the first match; returns the number deleted."""
        ...


class BoundDBManager(Protocol):
    """A factory of per-delivery DB managers (what the worker holds)."""

    def for_event(self, event_id: str) -> DBManager: ...

    def insert_all(self, collection: str, documents: Sequence[Mapping[str, Any]]) -> None:
        """Insert documents that carry their own ``_id`` in one write; one whose
        ``_id`` is already there counts as inserted (a redelivery)."""
        ...


class BatchDBManager(Protocol):
    """What a batch handler gets as ``db_manager``: per-item binding, no unbound writes."""

    @property
    def task_ids(self) -> Sequence[str]:
        """Each item's task (or event) id, in the order of the items."""
        ...

    def for_item(self, index: int) -> DBManager:
        """The manager bound to item ``index`` (inserts keyed by its task id); the
        same object every time for one index."""
        ...

    def insert_all(self, collection: str, documents: Sequence[Mapping[str, Any]]) -> None:
        """Insert documents that carry their own ``_id`` (e.g. ``task_ids[i]``) in one
        write; one whose ``_id`` is already there counts as inserted (a redelivery)."""
        ...

    def find_one(self, collection: str, filter: Mapping[str, Any]) -> dict[str, Any] | None: ...

    def find_many(
        self, collection: str, filter: Mapping[str, Any] | None = None, limit: int = 100
    ) -> list[dict[str, Any]]: ...


class Handler(Protocol):
    """``handler(data, db_manager) -> bool``: False or an exception means retry."""

    def __call__(self, data: Mapping[str, Any], db_manager: DBManager) -> bool: ...


class BatchHandler(Protocol):
    """``handler(list_of_task_data, db_manager) -> list[bool]``, one result per item in
    order: True done, False retry (that item only); an exception, or a result that is
    not a list of as many bools, fails every item of the call."""

    def __call__(
        self, items: list[Mapping[str, Any]], db_manager: BatchDBManager, /
    ) -> Sequence[bool]: ...


class _NoDatabase:
    """Given to handlers when the worker runs without a database: fails on use."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"db_manager.{name}: this worker has no database configured")


NO_DATABASE: Any = _NoDatabase()
