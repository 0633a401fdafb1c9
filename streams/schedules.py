"""Recurring schedules: cron expressions that enqueue a task at each tick.

    qm.add_schedule("nightly-report", "0 3 * * *", queue_name="default",
                    task_type="report", task_data={...}, timezone="Europe/Paris")
    qm.list_schedules(); qm.get_schedule("nightly-report"); qm.remove_schedule("nightly-report")

A schedule lives in Redis (``lua/tick.lua`` lists its keys, all under one hash
tag) and is fired by ``ledger scheduler`` (``Scheduler.fire``). The cron math is
here, in Python (croniter, zoneinfo); the script only compares and sets:

1. "claim": if the schedule's ``next_run_at`` is still the tick this scheduler
   saw due, move it to the first tick after now (ticks missed while no
   scheduler ran coalesce into this one run) and record the tick's task — its
   id derived from the name and the tick — in ``firing:<name>``.
2. enqueue that task with ``enqueue.lua`` as an idempotent task (a repeat is a
   "dup"): the task's partition is another slot, so this is another script.
3. "done": drop the marker, record ``last_run_at``/``last_task_id``, count it.

Any number of schedulers may run: only one claims a tick. One that dies after
step 1 leaves the marker; every pass finishes every marker, so the tick still
fires, once. A fired task is an ordinary task (status, retries, dead letters).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from ledger.errors import ValidationError

from . import keys
from .replies import text
from .times import iso_utc

NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_CRON: Final = 200
MAX_TIMEZONE: Final = 64
SCHEDULE_NAMESPACE: Final = uuid.UUID("0b6f0a8e-3c1d-4f55-9b7e-5a2d8c4e9f21")


def check_name(name: object) -> str:
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise ValidationError(
            "name",
            "name must be 1-64 characters of A-Z a-z 0-9 _ . - (starting with one of A-Z a-z 0-9)",
        )
    return name


def _seconds(cron: str) -> bool:
    """Whether ``cron`` has a seconds field (6 fields, seconds first)."""
    return len(cron.split()) == 6


def check_cron(cron: object) -> str:
    """A 5-field cron expression, or 6 fields with seconds first (``*/2 * * * * *``)."""
    if not isinstance(cron, str) or not 0 < len(cron) <= MAX_CRON:
        raise ValidationError("cron", f"cron must be a string of 1 to {MAX_CRON} characters")
    fields = cron.split()
    if len(fields) not in (5, 6):
        raise ValidationError(
            "cron", "cron must have 5 fields (minute hour day month weekday) or 6 (seconds first)"
        )
    normal = " ".join(fields)
    try:
        ok = croniter.is_valid(normal, second_at_beginning=len(fields) == 6)
        if ok:
            croniter(normal, datetime(2000, 1, 1, tzinfo=UTC), second_at_beginning=len(fields) == 6)
    except Exception:
        ok = False
    if not ok:
        raise ValidationError("cron", f"cron {cron[:MAX_CRON]!r} is not a valid cron expression")
    return normal


def check_timezone(tz: object) -> str:
    if not isinstance(tz, str) or not 0 < len(tz) <= MAX_TIMEZONE:
        raise ValidationError(
            "timezone", "timezone must be an IANA time zone name, e.g. Europe/Paris"
        )
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValidationError("timezone", f"unknown time zone {tz!r}") from None
    return tz


def next_tick(cron: str, timezone: str, after_ms: int) -> int:
    """The first tick of ``cron`` (in ``timezone``) strictly after ``after_ms`` (ms, UTC)."""
    start = datetime.fromtimestamp(after_ms / 1000, tz=ZoneInfo(timezone))
    it = croniter(cron, start, second_at_beginning=_seconds(cron))
    nxt: datetime = it.get_next(datetime)
    return round(nxt.timestamp() * 1000)


def task_id(name: str, tick_ms: int) -> str:
    """The id of the task ``name`` fires at ``tick_ms``: the same for every scheduler."""
    return str(uuid.uuid5(SCHEDULE_NAMESPACE, f"{name}:{tick_ms}"))


def fingerprint(name: str, tick_ms: int) -> str:
    return hashlib.sha1(f"schedule\x1f{name}\x1f{tick_ms}".encode()).hexdigest()


def _int(value: str | None) -> int | None:
    return None if value is None or value == "" else int(value)


def describe(name: str, raw: Mapping[Any, Any]) -> dict[str, Any]:
    """A schedule's record as the API shows it (times as UTC ISO 8601)."""
    from .codec import unpack

    f = {text(k): v for k, v in raw.items()}
    s = {k: text(v) for k, v in f.items() if k != "data"}
    return {
        "name": name,
        "cron": s["cron"],
        "timezone": s["timezone"],
        "queue_name": s["queue_name"],
        "task_type": s["task_type"],
        "task_data": unpack(f["data"]),
        "priority": int(s["priority"]),
        "next_run_at": iso_utc(_int(s.get("next_run_at"))),
        "last_run_at": iso_utc(_int(s.get("last_run_at"))),
        "last_task_id": s.get("last_task_id"),
        "created_at": iso_utc(_int(s.get("created_at"))),
        "updated_at": iso_utc(_int(s.get("updated_at"))),
    }


__all__ = [
    "check_cron",
    "check_name",
    "check_timezone",
    "describe",
    "fingerprint",
    "keys",
    "next_tick",
    "task_id",
]
