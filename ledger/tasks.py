"""Tasks of the original queue, and the rules for their data.

A task is a job for a handler registered under ``task_type``. Tasks in the
original ``{operation, collection, data, filter}`` form are run by the default
DB handler, which only touches allow-listed collections and refuses Mongo
operators smuggled in as ``$``-keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


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
