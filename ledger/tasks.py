"""Tasks of the original queue, and the rules for their data.

A task is a job for a handler registered under ``task_type``. Tasks in the
original ``{operation, collection, data, filter}`` form are run by the default
DB handler, which only touches allow-listed collections and refuses Mongo
operators smuggled in as ``$``-keys. In the collections where the workers
record ledger events (``EVENT_RECORD_COLLECTIONS``) an ``_id`` of the event-id
form ``"<user_id>:<version>"`` belongs to a recorded event: a task may neither
insert one (the recorder would take it for the real event) nor name one in a
filter.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final, NamedTuple

from .errors import ValidationError


class Priority(IntEnum):
    """The original QueuePriority values; workers drain higher numbers first."""

    LOW = 1
    NORMAL = 2
    HIGH = 3
    CRITICAL = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class Task:
    task_id: str
    queue_name: str
    task_type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    priority: Priority = Priority.NORMAL
    enqueued_at_ms: int = 0


# --- validation of enqueue inputs ---------------------------------------------------

NAME_PATTERN: Final = r"^[A-Za-z0-9_.:-]{1,64}$"
QUEUE_NAME_RE: Final = re.compile(NAME_PATTERN)
TASK_TYPE_RE: Final = re.compile(NAME_PATTERN)
COLLECTION_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
MAX_TASK_BYTES: Final = 64 * 1024
"""Bound on ``task_data`` as compact UTF-8 JSON (see ``task_size``)."""
MAX_DEPTH: Final = 20
"""Deepest nesting of objects/arrays in ``task_data``; the top object is depth 1."""
MAX_DELAY_SECONDS: Final = 30 * 24 * 3600
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
_PATH_KEY_MAX = 64


class PayloadTooLarge(ValidationError):
    """``task_data`` is over ``MAX_TASK_BYTES`` (the HTTP edge answers 413)."""

    code = "payload_too_large"


class CheckedTask(NamedTuple):
    """Enqueue inputs that passed ``check_task``."""

    queue_name: str
    task_type: str
    data: dict[str, Any]
    priority: Priority
    delay_ms: int


def check_name(value: object, field: str, pattern: re.Pattern[str] = QUEUE_NAME_RE) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValidationError(field, f"{field} must be 1-64 of the characters A-Z a-z 0-9 _ . : -")
    return str(value)


def check_priority(value: object, field: str = "priority") -> Priority:
    """A ``Priority`` or its number 1 (LOW) .. 4 (CRITICAL)."""
    if type(value) is Priority:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value not in (1, 2, 3, 4):
        raise ValidationError(
            field, f"{field} must be one of 1 (low), 2 (normal), 3 (high), 4 (critical)"
        )
    return Priority(value)


def check_delay(value: object, field: str = "delay") -> int:
    """Seconds (int or float, 0 .. 30 days) to wait before running; returned in ms."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(field, f"{field} must be a number of seconds")
    if not math.isfinite(value) or not 0 <= value <= MAX_DELAY_SECONDS:
        raise ValidationError(field, f"{field} must be between 0 and {MAX_DELAY_SECONDS} seconds")
    return round(value * 1000)


def _path(path: str, key: str) -> str:
    shown = key if len(key) <= _PATH_KEY_MAX else key[:_PATH_KEY_MAX] + "…"
    return f"{path}.{shown}"


def _check_str(value: str, field: str, what: str) -> int:
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(field, f"{what} is not valid unicode text") from None


class _Budget:
    """Running bounds on the JSON size: the lower one stops huge inputs early; when
    the upper one stays within the limit, the exact measure is not needed."""

    __slots__ = ("field", "most", "used")

    def __init__(self, field: str) -> None:
        self.field = field
        self.used = 0
        self.most = 0

    def spend(self, n: int, most: int) -> None:
        self.used += n
        self.most += most
        if self.used > MAX_TASK_BYTES:
            raise PayloadTooLarge(self.field, f"{self.field} is larger than {MAX_TASK_BYTES} bytes")


def _walk(value: object, path: str, depth: int, budget: _Budget) -> None:
    if value is None or isinstance(value, bool):
        budget.spend(4, 5)
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValidationError(path, f"{path} is out of the 64-bit integer range")
        budget.spend(1, 20)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(path, f"{path} must be a finite number")
        budget.spend(1, 24)
    elif isinstance(value, str):
        n = _check_str(value, path, path)
        budget.spend(2 + n, 2 + 6 * n)  # an escaped control character takes 6 bytes
    elif isinstance(value, dict | list):
        if depth > MAX_DEPTH:
            raise ValidationError(path, f"{path} is nested deeper than {MAX_DEPTH} levels")
        budget.spend(2, 2)
        if isinstance(value, list):
            for i, item in enumerate(value):
                budget.spend(0, 1)  # the comma
                _walk(item, f"{path}[{i}]", depth + 1, budget)
            return
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(path, f"{path} has a key that is not a string")
            field = _path(path, key)
            n = _check_str(key, field, "a key")
            budget.spend(3 + n, 4 + 6 * n)
            if key.startswith("$"):
                raise ValidationError(field, f"{field}: keys must not start with '$'")
            if "\x00" in key:
                raise ValidationError(field, f"{field}: keys must not contain NUL characters")
            _walk(item, field, depth + 1, budget)
    else:
        raise ValidationError(path, f"{path} must be JSON data, not {type(value).__name__}")


def task_size(data: object) -> int:
    """Bytes of ``data`` as compact UTF-8 JSON: the measure ``MAX_TASK_BYTES`` bounds."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return len(text.encode("utf-8"))


def check_task_data(data: object, field: str = "task_data") -> dict[str, Any]:
    """JSON-like ``data`` (an object with string keys), no ``$``/NUL keys, bounded.

    Values may be str, int (64-bit), finite float, bool, None, list and dict, at
    most ``MAX_DEPTH`` deep and ``MAX_TASK_BYTES`` long; errors name the path,
    e.g. ``task_data.filter.$where``.
    """
    if not isinstance(data, dict):
        raise ValidationError(field, f"{field} must be an object")
    budget = _Budget(field)
    _walk(data, field, 1, budget)
    if budget.most > MAX_TASK_BYTES and task_size(data) > MAX_TASK_BYTES:
        raise PayloadTooLarge(field, f"{field} is larger than {MAX_TASK_BYTES} bytes")
    return data


def check_task(
    queue_name: object,
    task_type: object,
    data: object,
    priority: object = Priority.NORMAL,
    delay: object = 0,
) -> CheckedTask:
    """Check every input of an enqueue; errors name the field (``ValidationError``)."""
    return CheckedTask(
        queue_name=check_name(queue_name, "queue_name", QUEUE_NAME_RE),
        task_type=check_name(task_type, "task_type", TASK_TYPE_RE),
        data=check_task_data(data, "task_data"),
        priority=check_priority(priority),
        delay_ms=check_delay(delay),
    )


# --- the default DB handler's task form ---------------------------------------------

DEFAULT_COLLECTIONS: Final = frozenset(
    {
        "users",
        "credit_purchases",
        "credit_usage",
        "credit_updates",
        "credit_calculations",
        "notifications",
        "analytics",
        "credit_holds",
    }
)
"""The original system's collections (and ``credit_holds``, where the workers
record hold events): what the default DB handler may touch."""
READ_MODEL_COLLECTIONS: Final = frozenset({"balances", "credit_scores", "events", "checkpoints"})
"""Owned by the projectors; never writable through task data."""
WORKER_COLLECTIONS: Final = frozenset({"task_targets"})
"""Kept by the workers (the target each update or delete of a delivery resolved
to, so a redelivery acts on the same document); never writable through task data."""
EVENT_RECORD_COLLECTIONS: Final = frozenset(
    {
        "users",
        "credit_purchases",
        "credit_usage",
        "credit_updates",
        "credit_holds",
    }
)
"""Where the workers record ledger events, each under its event id."""
EVENT_ID_PATTERN: Final = r"^[A-Za-z0-9._@:-]{1,128}:[0-9]+$"
"""The form of a ledger event id, ``"<user_id>:<version>"`` (a user id may hold ":").
Anchored with ``$`` as MongoDB's regular expressions are, so both sides agree."""
EVENT_ID_RE: Final = re.compile(EVENT_ID_PATTERN)
OPERATIONS: Final = frozenset({"insert", "update", "delete"})
_DB_TASK_KEYS: Final = ("operation", "collection", "data", "filter")


@dataclass(frozen=True, slots=True, kw_only=True)
class DbTask:
    """A checked ``{operation, collection, data, filter}`` task."""

    operation: str
    collection: str
    data: dict[str, Any] | None = None
    filter: dict[str, Any] | None = None


def _forbidden_collection(name: str) -> str | None:
    if name.startswith("system."):
        return "system collections are never writable"
    if name in READ_MODEL_COLLECTIONS:
        return "read models are written only by the projectors"
    if name in WORKER_COLLECTIONS:
        return "kept by the workers, never writable through tasks"
    return None


def is_event_id(value: object) -> bool:
    """Whether ``value`` has the form of a ledger event id, ``"<user_id>:<version>"``."""
    return isinstance(value, str) and EVENT_ID_RE.match(value) is not None


def check_not_event_id(collection: str, value: object, field: str) -> None:
    """Refuse an ``_id`` a task names (inserts, or matches in a filter) that could be a
    recorded ledger event's: unforgeable records need ids tasks cannot take."""
    if collection in EVENT_RECORD_COLLECTIONS and is_event_id(value):
        raise ValidationError(
            field,
            f"{field}: _id {value!r} has the form of a ledger event "
            f"id ('<user_id>:<version>'); in {collection!r} such ids "
            "belong to the events the workers record, which tasks "
            "cannot write",
        )


def allowed_collections(extra: Iterable[str] = ()) -> frozenset[str]:
    """``DEFAULT_COLLECTIONS`` plus ``extra``; refuses read models and ``system.*``."""
    if isinstance(extra, str):
        raise ValidationError("collections", "collections must be a list of names")
    names = set(DEFAULT_COLLECTIONS)
    for name in extra:
        if not isinstance(name, str) or not COLLECTION_RE.fullmatch(name):
            raise ValidationError("collections", f"{name!r} is not a collection name")
        reason = _forbidden_collection(name)
        if reason:
            raise ValidationError("collections", f"{name!r}: {reason}")
        names.add(name)
    return frozenset(names)


def _object(task: Mapping[str, Any], key: str, *, non_empty: bool) -> dict[str, Any]:
    field = f"task_data.{key}"
    value = task.get(key)
    if not isinstance(value, dict):
        raise ValidationError(field, f"{field} must be an object")
    if non_empty and not value:
        raise ValidationError(field, f"{field} must not be empty")
    return value


def _absent(task: Mapping[str, Any], key: str, operation: str) -> None:
    if task.get(key) is not None:
        raise ValidationError(f"task_data.{key}", f"{operation} takes no {key}")


def check_db_task(data: Mapping[str, Any], allowed: frozenset[str] = DEFAULT_COLLECTIONS) -> DbTask:
    """Check a task for the default DB handler against the ``allowed`` collections.

    insert needs ``data``; update needs non-empty ``data`` (without ``_id``) and a
    non-empty ``filter``; delete needs a non-empty ``filter``. Read models, the
    workers' collections and ``system.*`` are refused even when ``allowed`` lists
    them, and so is an event-id ``_id`` in an insert or a filter of
    ``EVENT_RECORD_COLLECTIONS`` (see ``check_not_event_id``).
    """
    if not isinstance(data, Mapping):
        raise ValidationError("task_data", "task_data must be an object")
    task = check_task_data(dict(data), "task_data")
    for key in task:
        if key not in _DB_TASK_KEYS:
            raise ValidationError(_path("task_data", key), f"unknown field {key!r}")
    operation = task.get("operation")
    if not isinstance(operation, str) or operation not in OPERATIONS:
        raise ValidationError(
            "task_data.operation", "operation must be one of insert, update, delete"
        )
    collection = task.get("collection")
    if not isinstance(collection, str):
        raise ValidationError("task_data.collection", "collection must be a string")
    reason = _forbidden_collection(collection)
    if reason is None and collection not in allowed:
        reason = "not an allowed collection"
    if reason:
        raise ValidationError("task_data.collection", f"collection {collection!r}: {reason}")
    if operation == "insert":
        _absent(task, "filter", operation)
        doc = _object(task, "data", non_empty=False)
        check_not_event_id(collection, doc.get("_id"), "task_data.data._id")
        return DbTask(operation=operation, collection=collection, data=doc)
    if operation == "update":
        doc = _object(task, "data", non_empty=True)
        if "_id" in doc:
            raise ValidationError("task_data.data._id", "an update must not change _id")
        query = _object(task, "filter", non_empty=True)
        check_not_event_id(collection, query.get("_id"), "task_data.filter._id")
        return DbTask(operation=operation, collection=collection, data=doc, filter=query)
    _absent(task, "data", operation)
    query = _object(task, "filter", non_empty=True)
    check_not_event_id(collection, query.get("_id"), "task_data.filter._id")
    return DbTask(operation=operation, collection=collection, filter=query)
