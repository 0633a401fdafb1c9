"""``QueueManager``: the original system's Python API over the stream engine.

    qm = QueueManager()                        # REDIS_URL, LEDGER_PARTITIONS from env
    task_id = qm.enqueue(queue_name="high_priority", task_type="credit_purchase",
                         task_data={...}, priority=QueuePriority.HIGH, delay=0)
    qm.register_handler("credit_calculation", handler)
    qm.register_batch_handler("notify", batch_handler, max_batch=100)
    qm.get_task_status(task_id); qm.get_queue_stats(); qm.get_queue_stats("default")

plus the ledger's own calls (``register_user``, ``purchase``, ``use``, ``adjust``,
and the credit holds ``hold``, ``capture``, ``release``), which go through the
atomic append; ``open_holds`` lists an account's open holds.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

from ledger.commands import (
    Adjust,
    Capture,
    Command,
    Hold,
    Purchase,
    RegisterUser,
    Release,
    Use,
    check,
)
from ledger.errors import IdempotencyKeyReused, LedgerError, ValidationError
from ledger.tasks import (
    MAX_TASK_BYTES,
    PayloadTooLarge,
    Priority,
    allowed_collections,
    check_db_task,
    check_task,
)

from . import keys, schedules
from .appender import Appended, Appender, check_idempotency_key
from .codec import pack
from .config import StreamsConfig
from .connection import RedisClient, connect, ensure_partitions, translate
from .deadletters import DeadLetter, list_dead, requeue
from .dependencies import Dependencies, check_depends_on
from .handlers import BatchHandler, BoundDBManager, Handler
from .holds import OpenHoldView, account_holds, open_holds
from .registry import DEFAULT_MAX_BATCH, HandlerRegistry, default_registry
from .replies import text
from .scripts import Call, ScriptArg, load, run_many
from .status import queue_stats, task_status
from .worker import Housekeeping, Worker, WorkerConfig

TASK_ID_NAMESPACE = uuid.UUID("6f1c3a52-8d0e-4d3b-9a57-3c2e1f0b7a10")


class Enqueued(NamedTuple):
    """What ``QueueManager.submit`` did: the task's id and its status then."""

    task_id: str
    status: str


class QueueManager:
    """Producer, registry and reader of the queue; ``worker()`` makes consumers."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        config: StreamsConfig | None = None,
        client: RedisClient | None = None,
        db: BoundDBManager | None = None,
        registry: HandlerRegistry = default_registry,
    ) -> None:
        self.config = config or StreamsConfig.from_env()
        if redis_url is not None:
            self.config = replace(self.config, redis_url=redis_url)
        self.redis = client if client is not None else connect(self.config.redis_url)
        self.db = db
        self.registry = registry
        self.allowed = allowed_collections(self.config.extra_collections)
        self.scripts = load(self.redis)
        self.appender = Appender(self.redis, self.config, self.scripts)
        self.dependencies = Dependencies(self.redis, self.scripts, self.config.partitions)
        self._checked = False
        self._workers: list[tuple[Worker, threading.Thread]] = []

    def _ready(self) -> None:
        if not self._checked:
            ensure_partitions(self.redis, self.config.partitions)
            self._checked = True

    # -- the original API ---------------------------------------------------------
    def enqueue(
        self,
        queue_name: str,
        task_type: str,
        task_data: Mapping[str, Any],
        priority: Priority | int | None = None,
        delay: float = 0,
        idempotency_key: str | None = None,
        depends_on: Sequence[str] | None = None,
    ) -> str:
        """Queue a task; returns its id. ``priority`` defaults to the queue's.

        With ``depends_on`` (at most 100 task ids) the task waits until every one
        of them completed, and is cancelled if one fails or is cancelled
        (``streams.dependencies``); a delay then counts from its release.

        With ``wait_replicas`` the task is confirmed by that many replicas
        before its id is returned, as an append is; else ``Unavailable`` (the
        task stays queued: retry with the same ``idempotency_key``)."""
        return self.submit(
            queue_name, task_type, task_data, priority, delay, idempotency_key, depends_on
        ).task_id

    def submit(
        self,
        queue_name: str,
        task_type: str,
        task_data: Mapping[str, Any],
        priority: Priority | int | None = None,
        delay: float = 0,
        idempotency_key: str | None = None,
        depends_on: Sequence[str] | None = None,
    ) -> Enqueued:
        """``enqueue``, also telling the task's status once enqueued (queued,
        scheduled, waiting, or cancelled when a parent had failed already)."""
        parents = check_depends_on(depends_on)
        task_id, call = self._enqueue_call(
            queue_name, task_type, task_data, priority, delay, idempotency_key, parents
        )
        self._ready()
        if parents:
            outcome, status = self.dependencies.enqueue(task_id, call[2], parents, self.config.wait)
        else:
            with translate():
                reply = run_many(self.redis, [call], wait=self.config.wait)[0]
            outcome = reply[0].decode()
            status = "scheduled" if call[2][5] else "queued"
        if outcome == "reused":
            raise IdempotencyKeyReused(idempotency_key or "")
        if outcome == "exists":  # a uuid4 collision: practically never
            return self.submit(queue_name, task_type, task_data, priority, delay, None, parents)
        return Enqueued(task_id, status)

    def chain(self, steps: Sequence[Mapping[str, Any]]) -> list[str]:
        """Enqueue tasks that run one after the other: each step (``enqueue``'s
        keyword arguments, e.g. ``{"queue_name": …, "task_type": …, "task_data":
        …}``) depends on the one before it. Returns their ids in order. A step that
        fails (dead-lettered) or is cancelled cancels the rest."""
        if isinstance(steps, str | bytes) or not isinstance(steps, Sequence) or not steps:
            raise ValidationError("steps", "chain takes a non-empty list of enqueue arguments")
        ids: list[str] = []
        for i, step in enumerate(steps):
            if not isinstance(step, Mapping):
                raise ValidationError(f"steps[{i}]", f"steps[{i}] is not a mapping")
            if "depends_on" in step:
                raise ValidationError(f"steps[{i}].depends_on", "a chain sets depends_on itself")
            ids.append(self.enqueue(**step, depends_on=ids[-1:] or None))
        return ids

    def cancel(self, task_id: str) -> str:
        """Cancel a task that is waiting, queued or scheduled: it never runs, and
        the tasks waiting for it are cancelled too. Returns "cancelled", or the
        status that cannot be cancelled (processing, retrying, completed, failed,
        cancelled), or "missing" for an unknown id."""
        return self.dependencies.cancel(task_id)

    def enqueue_many(
        self,
        queue_name: str,
        task_type: str,
        tasks_data: Sequence[Mapping[str, Any]],
        priority: Priority | int | None = None,
        delay: float = 0,
    ) -> list[str]:
        """Queue many tasks of one kind in one round trip; returns their ids in order.

        Every task is checked before any is queued: one bad item (its error names
        it, e.g. ``tasks_data[3].amount``) queues nothing. Each task is then
        queued on its own, as by ``enqueue``.
        """
        if isinstance(tasks_data, str | bytes) or not isinstance(tasks_data, Sequence):
            raise ValidationError("tasks_data", "tasks_data must be a list of objects")
        built = []
        for i, data in enumerate(tasks_data):
            try:
                built.append(self._enqueue_call(queue_name, task_type, data, priority, delay))
            except ValidationError as exc:
                if exc.field in ("queue_name", "task_type", "priority", "delay"):
                    raise  # a common argument: not about this item
                field = (exc.field or "task_data").replace("task_data", f"tasks_data[{i}]", 1)
                if not field.startswith("tasks_data"):
                    field = f"tasks_data[{i}].{field}"  # e.g. a DB task's "collection"
                raise type(exc)(field, f"tasks_data[{i}]: {exc}") from None
        self._ready()
        with translate():
            replies = run_many(self.redis, [call for _, call in built], wait=self.config.wait)
        ids = [task_id for task_id, _ in built]
        for i, reply in enumerate(replies):
            if reply[0] == b"exists":  # a uuid4 collision: practically never
                ids[i] = self.enqueue(queue_name, task_type, tasks_data[i], priority, delay)
        return ids

    def _enqueue_call(
        self,
        queue_name: str,
        task_type: str,
        task_data: Mapping[str, Any],
        priority: Priority | int | None,
        delay: float,
        idempotency_key: str | None = None,
        depends_on: Sequence[str] = (),
    ) -> tuple[str, Call]:
        """Check one task; (its id, the enqueue.lua call that queues it)."""
        spec = self.config.queue(queue_name) if isinstance(queue_name, str) else None
        if spec is None:
            known = ", ".join(q.name for q in self.config.queues)
            raise ValidationError("queue_name", f"unknown queue {queue_name!r} (known: {known})")
        task = check_task(
            queue_name, task_type, task_data, spec.priority if priority is None else priority, delay
        )
        if (
            "operation" in task.data
            and "collection" in task.data
            and not self.registry.registered(task.task_type)
        ):
            check_db_task(task.data, self.allowed)
        data = pack(task.data)
        if len(data) > MAX_TASK_BYTES:
            raise PayloadTooLarge("task_data", f"task_data is larger than {MAX_TASK_BYTES} bytes")
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
            task_id = str(uuid.uuid5(TASK_ID_NAMESPACE, idempotency_key))
        else:
            task_id = str(uuid.uuid4())
        fp = (
            ""
            if idempotency_key is None
            else hashlib.sha1(
                b"\x1f".join(
                    [
                        task.queue_name.encode(),
                        task.task_type.encode(),
                        data,
                        str(int(task.priority)).encode(),
                        str(task.delay_ms).encode(),
                        *(f"after:{parent}".encode() for parent in depends_on),
                    ]
                )
            ).hexdigest()
        )
        p = keys.partition_of(task_id, self.config.partitions)
        return task_id, (
            self.scripts.enqueue,
            [keys.stream(p, task.priority), keys.task(p, task_id), keys.scheduled(p)],
            [
                task_id,
                task.queue_name,
                task.task_type,
                data,
                int(task.priority),
                task.delay_ms,
                fp,
                "1" if idempotency_key else "0",
                self.config.idempotency_ttl_s,
            ],
        )

    def register_handler(self, task_type: str, handler: Handler) -> None:
        """``handler(data, db_manager) -> bool`` runs tasks of ``task_type``."""
        self.registry.register(task_type, handler)

    def register_batch_handler(
        self, task_type: str, handler: BatchHandler, max_batch: int = DEFAULT_MAX_BATCH
    ) -> None:
        """``handler(list_of_task_data, db_manager) -> list[bool]`` runs up to
        ``max_batch`` consecutive tasks of ``task_type`` per call, one result per
        item: only the items that failed are retried (see ``streams.processor``)."""
        self.registry.register_batch(task_type, handler, max_batch)

    def get_task_status(self, task_id: str) -> dict[str, Any] | None:
        return task_status(self.redis, self.config.partitions, task_id)

    def get_queue_stats(self, queue_name: str | None = None) -> dict[str, Any]:
        """Stats of every queue, or of one (``{}``-free: unknown name -> ValidationError)."""
        if queue_name is not None and self.config.queue(queue_name) is None:
            raise ValidationError("queue_name", f"unknown queue {queue_name!r}")
        stats = queue_stats(self.redis, self.config, queue_name=queue_name)
        return stats[queue_name] if queue_name is not None else stats

    # -- ledger calls -------------------------------------------------------------
    def register_user(
        self,
        user_id: str,
        email: str,
        *,
        priority: Priority = Priority.NORMAL,
        idempotency_key: str | None = None,
    ) -> Appended:
        return self.append(
            RegisterUser(user_id=user_id, email=email),
            priority=priority,
            idempotency_key=idempotency_key,
        )

    def purchase(
        self,
        user_id: str,
        amount: int,
        transaction_id: str,
        currency: str = "USD",
        *,
        priority: Priority = Priority.NORMAL,
        idempotency_key: str | None = None,
    ) -> Appended:
        return self.append(
            Purchase(
                user_id=user_id, amount=amount, currency=currency, transaction_id=transaction_id
            ),
            priority=priority,
            idempotency_key=idempotency_key,
        )

    def use(
        self,
        user_id: str,
        amount: int,
        reason: str = "",
        *,
        priority: Priority = Priority.NORMAL,
        idempotency_key: str | None = None,
    ) -> Appended:
        return self.append(
            Use(user_id=user_id, amount=amount, reason=reason),
            priority=priority,
            idempotency_key=idempotency_key,
        )

    def adjust(
        self,
        user_id: str,
        delta: int,
        reason: str,
        *,
        priority: Priority = Priority.NORMAL,
        idempotency_key: str | None = None,
    ) -> Appended:
        return self.append(
            Adjust(user_id=user_id, delta=delta, reason=reason),
            priority=priority,
            idempotency_key=idempotency_key,
        )

    def hold(
        self,
        user_id: str,
        amount: int,
        expires_in_s: int,
        reason: str = "",
        *,
        priority: Priority = Priority.NORMAL,
        idempotency_key: str | None = None,
    ) -> Appended:
        """Reserve ``amount`` of the available credits for ``expires_in_s`` seconds.

        Returns the ``credits_held`` event: ``.hold_id`` names the hold,
        ``.held``/``.available`` are the account's after it. Raises
        ``InsufficientCredits`` (amount > available), ``TooManyHolds`` (the
        account has ``max_open_holds`` open) or ``ValidationError`` (e.g.
        ``expires_in_s`` beyond ``max_hold_expiry_s``). Unless captured or
        released first, ``ledger scheduler`` releases it at its expiry."""
        return self.append(
            Hold(user_id=user_id, amount=amount, reason=reason, expires_in_s=expires_in_s),
            priority=priority,
            idempotency_key=idempotency_key,
        )

    def capture(
        self,
        user_id: str,
        hold_id: str,
        amount: int | None = None,
        *,
        priority: Priority = Priority.NORMAL,
        idempotency_key: str | None = None,
    ) -> Appended:
        """Use ``amount`` of an open hold (None: all of it); the rest is released
        in the same event. ``HoldNotOpen`` if it was captured, released or has
        expired; ``UnknownHold`` if this account never made it."""
        return self.append(
            Capture(user_id=user_id, hold_id=hold_id, amount=amount),
            priority=priority,
            idempotency_key=idempotency_key,
        )

    def release(
        self,
        user_id: str,
        hold_id: str,
        *,
        priority: Priority = Priority.NORMAL,
        idempotency_key: str | None = None,
    ) -> Appended:
        """Release the whole of an open hold (errors as ``capture``)."""
        return self.append(
            Release(user_id=user_id, hold_id=hold_id),
            priority=priority,
            idempotency_key=idempotency_key,
        )

    def open_holds(self, user_id: str) -> list[OpenHoldView]:
        """The account's open holds in Redis, oldest first."""
        return open_holds(self.redis, self.config.partitions, user_id)

    def holds_of(self, user_id: str) -> dict[str, Any] | None:
        """The account's balance, held, available and open holds (oldest first), read
        together from Redis (held is the sum of the holds listed); None: no account."""
        state, holds = account_holds(self.redis, self.config.partitions, user_id)
        if not state:
            return None
        balance, held = int(state["balance"]), int(state.get("held") or 0)
        return {
            "user_id": user_id,
            "version": int(state["version"]),
            "balance": balance,
            "held": held,
            "available": balance - held,
            "holds": holds,
        }

    def append(
        self,
        command: Command,
        *,
        priority: Priority = Priority.NORMAL,
        idempotency_key: str | None = None,
    ) -> Appended:
        """Append one checked command atomically (raises the domain error if refused)."""
        result = self.append_batch([(command, priority, idempotency_key)])[0]
        if isinstance(result, LedgerError):
            raise result
        return result

    def append_batch(
        self, items: Sequence[tuple[Command, Priority | int, str | None]]
    ) -> list[Appended | LedgerError]:
        """Many appends in one round trip; each is atomic on its own."""
        from ledger.tasks import check_priority

        checked = [(check(cmd), check_priority(prio), key) for cmd, prio, key in items]
        self._ready()
        return self.appender.append_many(checked)

    def balance(self, user_id: str) -> dict[str, Any] | None:
        """The authoritative account state in Redis (the read models may lag)."""
        p = keys.partition_of(user_id, self.config.partitions)
        with translate():
            raw = self.redis.hgetall(keys.account(p, user_id))
        if not raw:
            return None
        f = {text(k): text(v) for k, v in raw.items()}
        held = int(f.get("held") or 0)
        return {
            "user_id": user_id,
            "version": int(f["version"]),
            "balance": int(f["balance"]),
            "held": held,
            "available": int(f["balance"]) - held,
            "purchased_total": int(f["purchased"]),
            "used_total": int(f["used"]),
            "head": f["head"],
        }

    # -- recurring schedules (streams/schedules.py) -----------------------------------
    def add_schedule(
        self,
        name: str,
        cron: str,
        queue_name: str,
        task_type: str,
        task_data: Mapping[str, Any],
        priority: Priority | int | None = None,
        timezone: str = "UTC",
    ) -> bool:
        """Create or replace the schedule ``name``; True if it was created.

        ``cron``: 5 fields, or 6 with seconds first. The task is checked as
        ``enqueue`` checks it (``ValidationError`` naming the field, nothing
        stored). A replaced schedule keeps its ``last_run_at`` and fires next at
        its new expression's first tick after now."""
        name = schedules.check_name(name)
        cron = schedules.check_cron(cron)
        timezone = schedules.check_timezone(timezone)
        _, (_, _, args) = self._enqueue_call(queue_name, task_type, task_data, priority, 0)
        self._ready()
        with translate():
            first = schedules.next_tick(cron, timezone, int(time.time() * 1000))
            put: list[ScriptArg] = [
                "put",
                name,
                first,
                *("cron", cron, "timezone", timezone, "queue_name", args[1]),
                *("task_type", args[2], "data", args[3], "priority", args[4]),
            ]
            created = run_many(
                self.redis, [(self.scripts.tick, [keys.SCHEDULES, keys.schedule(name)], put)]
            )[0]
        return bool(int(created))

    def remove_schedule(self, name: str) -> bool:
        """Delete the schedule ``name``; False if there was none. A tick already
        claimed still fires; none after."""
        if not isinstance(name, str) or schedules.NAME_RE.fullmatch(name) is None:
            return False
        with translate():
            gone = run_many(
                self.redis,
                [(self.scripts.tick, [keys.SCHEDULES, keys.schedule(name)], ["remove", name])],
            )[0]
        return bool(int(gone))

    def get_schedule(self, name: str) -> dict[str, Any] | None:
        if not isinstance(name, str) or schedules.NAME_RE.fullmatch(name) is None:
            return None
        with translate():
            raw = self.redis.hgetall(keys.schedule(name))
        return schedules.describe(name, raw) if raw else None

    def list_schedules(self) -> list[dict[str, Any]]:
        """Every schedule, soonest first."""
        with translate():
            names = [text(n) for n in self.redis.zrange(keys.SCHEDULES, 0, -1)]
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(keys.schedule(name))
            raws = pipe.execute() if names else []
        return [schedules.describe(n, raw) for n, raw in zip(names, raws, strict=True) if raw]

    # -- operators ------------------------------------------------------------------
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return list_dead(self.redis, self.config.partitions, limit)

    def requeue(self, dead_id: str) -> str:
        return requeue(self.redis, self.scripts, self.config.partitions, dead_id)

    # -- consumers --------------------------------------------------------------------
    def worker(
        self,
        config: WorkerConfig | None = None,
        *,
        housekeeping: Housekeeping | None = None,
        **overrides: Any,
    ) -> Worker:
        """A consumer in the ``workers`` group over the selected priority levels
        (consumers sharing ``housekeeping`` take turns looking for retries and dead
        consumers' entries: one process's threads)."""
        base = config or WorkerConfig(
            allowed_collections=self.allowed, idempotency_ttl_s=self.config.idempotency_ttl_s
        )
        if overrides:
            base = replace(base, **overrides)
        self._ready()
        return Worker(
            self.redis,
            self.config.partitions,
            db=self.db,
            registry=self.registry,
            config=base,
            scripts=self.scripts,
            housekeeping=housekeeping,
        )

    def start_workers(self, count: int | None = None, **overrides: Any) -> None:
        """Run ``count`` consumer threads (default: the queues' configured workers)."""
        n = count if count is not None else sum(q.workers for q in self.config.queues)
        shared = Housekeeping()  # one sweep for the process, not one per thread
        for i in range(n):
            w = self.worker(housekeeping=shared, **overrides)
            w.consumer = f"{w.consumer}-{i}"
            t = threading.Thread(target=w.run, name=f"ledger-worker-{i}", daemon=True)
            t.start()
            self._workers.append((w, t))

    def stop_workers(self, timeout: float = 30.0) -> None:
        """Let each worker finish its round, then join it."""
        for w, _ in self._workers:
            w.stop()
        for _, t in self._workers:
            t.join(timeout)
        self._workers.clear()

    def close(self) -> None:
        self.stop_workers()
        self.redis.close()
