"""Tasks that wait for other tasks (``depends_on``), and cancellation.

A task enqueued with ``depends_on`` is ``waiting`` until every parent
``completed``; then it is queued (or scheduled, with a delay counted from then)
and runs. A parent that ends ``failed`` (dead-lettered) or ``cancelled`` cancels
it, and its own dependents after it, each with ``last_error`` naming the parent.

Parents and children may live in different partitions, so on a Redis Cluster
on different nodes: no one script can see both. The steps (``lua/deps.lua``):

1. the parents must exist (an unknown id is refused before anything is written);
2. "create" writes the child's record (status ``waiting``, its data, the set of
   parents it awaits) in its partition;
3. "link" adds the child to each parent's children set, in the parent's
   partition, unless that parent has ended already: then its end is the answer;
4. "arm" applies those answers; from now on an empty set releases the child.

A parent's end (``settle.lua``, or a cancel) moves its children set into an
outbox entry of its partition *in the same step as the end*. The outbox is a
stream read by the consumer group ``release`` (``Releaser``): each entry's
children are told ("release", in each child's partition), then the entry is
acknowledged and deleted. A process killed in between leaves the entry pending:
another one takes it over after ``claim_idle_ms`` and tells the children again,
which changes nothing for those already told (a child forgets a parent once; a
waiting task is released or cancelled once). So nothing is lost and nothing is
released twice, and a diamond (D after B and C, both after A) runs D once.

A producer that dies between steps 2 and 4 leaves the child waiting and not
armed; a repeat of the enqueue with the same Idempotency-Key finishes the steps
(without a key the caller never learnt the id). Requeueing a dead-lettered
parent does not revive children already cancelled.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ledger.errors import ValidationError

from . import finished, keys
from .connection import RedisClient, translate
from .replies import text
from .scripts import Call, ScriptArg, Scripts, Wait, run_many

log = logging.getLogger(__name__)

MAX_PARENTS = 100
"""Most parents one task may wait for."""
MAX_TASK_ID = 128
OUTBOX_BATCH = 100
"""Outbox entries one ``Releaser.drain`` call takes per partition and round."""
RELEASE_GROUP = "release"
CANCELLABLE = ("waiting", "queued", "scheduled")

TASK_ID_PATTERN = r"[A-Za-z0-9_.:-]{1,128}"
_TASK_ID_RE = re.compile(TASK_ID_PATTERN)
"""What a task id this system hands out looks like (uuid4/uuid5 text): anything
else cannot name a task, and "," separates ids in an outbox entry."""


def check_depends_on(value: object) -> tuple[str, ...]:
    """The parent ids of ``depends_on``: a list of 1..``MAX_PARENTS`` task ids
    (repeats count once). None or ``[]`` means no parents."""
    if value is None:
        return ()
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise ValidationError("depends_on", "depends_on must be a list of task ids")
    if len(value) > MAX_PARENTS:
        raise ValidationError(
            "depends_on", f"depends_on names {len(value)} tasks; at most {MAX_PARENTS}"
        )
    out: dict[str, None] = {}
    for i, item in enumerate(value):
        if not isinstance(item, str) or _TASK_ID_RE.fullmatch(item) is None:
            raise ValidationError(
                "depends_on", f"depends_on[{i}] is not a task id (letters, digits, '-_.:')"
            )
        out[item] = None
    return tuple(out)


def partition_keys(p: keys.Partition) -> list[str]:
    """The fixed KEYS[1..8] of a ``deps.lua`` call on partition ``p``."""
    return [
        keys.stats(p),
        keys.waiting(p),
        keys.scheduled(p),
        keys.outbox(p),
        *(keys.stream(p, lv) for lv in keys.LEVELS_DESC),
    ]


def task_keys(p: keys.Partition, task_id: str) -> list[str]:
    """A task's record, deps set and children set (``deps.lua`` KEYS[9+3i..])."""
    return [keys.task(p, task_id), keys.deps(p, task_id), keys.children(p, task_id)]


@dataclass(slots=True)
class Drained:
    """What one ``Releaser.drain`` did."""

    entries: int = 0
    released: int = 0
    cancelled: int = 0


class Dependencies:
    """Waiting tasks: enqueue with parents, cancel, and tell children of ends."""

    def __init__(self, client: RedisClient, scripts: Scripts, partitions: int) -> None:
        self.redis = client
        self.scripts = scripts
        self.partitions = partitions

    def _p(self, task_id: str) -> keys.Partition:
        return keys.partition_of(task_id, self.partitions)

    def unknown(self, task_ids: Sequence[str]) -> list[str]:
        """The ids among ``task_ids`` with no task record (a hash, or a completed
        task's compact one)."""
        with translate():
            pipe = self.redis.pipeline(transaction=False)
            for tid in task_ids:
                pipe.exists(keys.task(self._p(tid), tid))
            found = pipe.execute()
        missing = [tid for tid, n in zip(task_ids, found, strict=True) if not int(n)]
        done = self._completed(missing)
        return [tid for tid in missing if tid not in done]

    def _completed(self, task_ids: Sequence[str]) -> set[str]:
        """Those of ``task_ids`` that completed and left their hash for a compact
        record (``streams.finished``): final, so asking after a hash was missing is safe."""
        now_ms = int(time.time() * 1000)
        tasks = [(self._p(tid), tid) for tid in task_ids]
        return set(finished.lookup_many(self.redis, tasks, now_ms))

    def enqueue(
        self, task_id: str, args: Sequence[ScriptArg], parents: Sequence[str], wait: Wait | None
    ) -> tuple[str, str]:
        """Create the waiting task ``task_id`` (``args``: enqueue.lua's ARGV) and
        link it to ``parents``; returns (outcome, status): outcome is "ok", "dup"
        (enqueued before), "reused" or "exists" as for ``enqueue.lua``; status is
        the task's status now (waiting, queued, scheduled or cancelled)."""
        missing = self.unknown(parents)
        if missing:
            raise ValidationError(
                "depends_on", f"depends_on names unknown task(s): {', '.join(missing[:5])}"
            )
        p = self._p(task_id)
        fixed = partition_keys(p)
        mine = task_keys(p, task_id)
        with translate():
            reply = run_many(
                self.redis,
                [(self.scripts.deps, [*fixed, *mine], ["create", *args, *parents])],
                wait=wait,
            )[0]
        outcome = text(reply[0])
        if outcome in ("reused", "exists"):
            return outcome, ""
        if outcome == "dup" and (text(reply[1]) != "waiting" or text(reply[2]) == "1"):
            return outcome, text(reply[1])  # enqueued and armed before
        answers = self._link(task_id, parents)
        pairs: list[ScriptArg] = [v for parent in parents for v in (parent, answers[parent])]
        with translate():
            status = text(
                run_many(
                    self.redis,
                    [(self.scripts.deps, [*fixed, *mine], ["arm", task_id, *pairs])],
                    wait=wait,
                )[0][0]
            )
        if status == "cancelled":
            self._releaser().drain([p])
        return outcome, status

    def _link(self, child: str, parents: Sequence[str]) -> dict[str, str]:
        """Join ``child`` to each parent's children set: {parent: answer}."""
        by_p: dict[keys.Partition, list[str]] = defaultdict(list)
        for parent in parents:
            by_p[self._p(parent)].append(parent)
        calls: list[Call] = [
            (
                self.scripts.deps,
                [k for parent in ps for k in (keys.task(p, parent), keys.children(p, parent))],
                ["link", child, *ps],
            )
            for p, ps in by_p.items()
        ]
        with translate():
            replies = run_many(self.redis, calls)
        answers: dict[str, str] = {}
        for ps, reply in zip(by_p.values(), replies, strict=True):
            for parent, answer in zip(ps, reply, strict=True):
                answers[parent] = text(answer)
        for parent in self._completed([p for p, a in answers.items() if a == "gone"]):
            answers[parent] = "completed"
        return answers

    def cancel(self, task_id: str) -> str:
        """Cancel a waiting, queued or scheduled task: "cancelled"; else its status
        (nothing changed), or "missing". Its dependents are cancelled after it."""
        if not isinstance(task_id, str) or not 0 < len(task_id) <= MAX_TASK_ID:
            return "missing"
        p = self._p(task_id)
        with translate():
            status, told = run_many(
                self.redis,
                [
                    (
                        self.scripts.deps,
                        [*partition_keys(p), *task_keys(p, task_id)],
                        ["cancel", task_id],
                    )
                ],
            )[0]
        if int(told):
            self._releaser().drain([p])
        if text(status) == "missing" and self._completed([task_id]):
            return "completed"
        return text(status)

    def _releaser(self) -> Releaser:
        """This process's consumer of the outboxes (a worker's sweep takes over what
        it left pending if the process dies mid-way)."""
        name = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"
        return Releaser(self.redis, self.scripts, self.partitions, name)


@dataclass(frozen=True, slots=True)
class _Entry:
    partition: keys.Partition
    entry_id: str
    parent: str
    outcome: str
    error: str
    children: tuple[str, ...]


class Releaser:
    """Reads partitions' outboxes (group ``release``) and tells children of their
    parents' ends. Workers call ``drain`` right after a settle that wrote outbox
    entries, and from their periodic sweep with ``min_idle_ms`` to take over the
    entries of a process that died mid-way."""

    def __init__(
        self,
        client: RedisClient,
        scripts: Scripts,
        partitions: int,
        consumer: str,
    ) -> None:
        self.redis = client
        self.scripts = scripts
        self.partitions = partitions
        self.consumer = consumer

    def drain(
        self, parts: Iterable[keys.Partition] | None = None, min_idle_ms: int = -1
    ) -> Drained:
        """Handle the outbox entries of ``parts`` (default: all), and those their
        children's cancellations write, until none is left; ``min_idle_ms`` >= 0
        also takes over entries pending that long (a dead process's)."""
        todo = set(keys.partitions(self.partitions) if parts is None else parts)
        done = Drained()
        idle = min_idle_ms
        while todo:
            entries = self._take(sorted(todo), idle)
            idle = -1  # taken over once; the rest are entries written meanwhile
            if not entries:
                break
            todo = self._tell(entries, done)
            self._done(entries)
            done.entries += len(entries)
            taken: dict[keys.Partition, int] = defaultdict(int)
            for e in entries:
                taken[e.partition] += 1
            todo |= {p for p, n in taken.items() if n >= OUTBOX_BATCH}  # more may be left
        return done

    def _take(self, parts: Sequence[keys.Partition], min_idle_ms: int) -> list[_Entry]:
        with translate():
            replies = run_many(
                self.redis,
                [
                    (
                        self.scripts.deps,
                        partition_keys(p),
                        ["take", self.consumer, OUTBOX_BATCH, min_idle_ms],
                    )
                    for p in parts
                ],
            )
        out = []
        for p, flat in zip(parts, replies, strict=True):
            for i in range(0, len(flat), 5):
                entry_id, parent, outcome, error, children = (text(v) for v in flat[i : i + 5])
                ids = tuple(c for c in children.split(",") if c)
                out.append(_Entry(p, entry_id, parent, outcome, error, ids))
        return out

    def _tell(self, entries: Sequence[_Entry], done: Drained) -> set[keys.Partition]:
        """Apply each entry's end to its children; the partitions whose outbox
        got entries meanwhile (children cancelled, with children of their own)."""
        calls: list[Call] = []
        targets: list[keys.Partition] = []
        for e in entries:
            by_p: dict[keys.Partition, list[str]] = defaultdict(list)
            for child in e.children:
                by_p[keys.partition_of(child, self.partitions)].append(child)
            for p, ids in by_p.items():
                calls.append(
                    (
                        self.scripts.deps,
                        [*partition_keys(p), *(k for c in ids for k in task_keys(p, c))],
                        ["release", e.parent, e.outcome, e.error, *ids],
                    )
                )
                targets.append(p)
        if not calls:
            return set()
        with translate():
            replies = run_many(self.redis, calls)
        again = set()
        for p, (released, cancelled, told) in zip(targets, replies, strict=True):
            done.released += int(released)
            done.cancelled += int(cancelled)
            if int(told):
                again.add(p)
        return again

    def _done(self, entries: Sequence[_Entry]) -> None:
        by_p: dict[keys.Partition, list[str]] = defaultdict(list)
        for e in entries:
            by_p[e.partition].append(e.entry_id)
        with translate():
            run_many(
                self.redis,
                [(self.scripts.deps, partition_keys(p), ["done", *ids]) for p, ids in by_p.items()],
            )


def waiting_tasks(client: RedisClient, partitions: int, limit: int = 50) -> list[dict[str, Any]]:
    """The oldest waiting tasks (at most ``limit``) and the parents each still
    awaits, for operators (the dashboard)."""
    parts = keys.partitions(partitions)
    with translate():
        pipe = client.pipeline(transaction=False)
        for p in parts:
            pipe.zrange(keys.waiting(p), 0, limit - 1, withscores=True)
        found = pipe.execute()
    oldest = sorted(
        (
            (int(score), text(tid), p)
            for p, rows in zip(parts, found, strict=True)
            for tid, score in rows
        ),
    )[:limit]
    if not oldest:
        return []
    with translate():
        pipe = client.pipeline(transaction=False)
        for _, tid, p in oldest:
            pipe.hmget(keys.task(p, tid), "queue_name", "task_type", "depends_on")
            pipe.smembers(keys.deps(p, tid))
        replies = pipe.execute()
    out = []
    for i, (at, tid, _) in enumerate(oldest):
        queue, task_type, parents = (text(v) if v is not None else None for v in replies[2 * i])
        out.append(
            {
                "task_id": tid,
                "queue_name": queue,
                "task_type": task_type,
                "enqueued_at_ms": at,
                "depends_on": parents.split(",") if parents else [],
                "waiting_for": sorted(text(v) for v in replies[2 * i + 1]),
            }
        )
    return out
