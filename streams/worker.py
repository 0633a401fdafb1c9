"""A consumer in a group over every priority stream: read, run, settle.

One round: claim what is due for another attempt (failed entries whose backoff
ran out, entries of consumers that died), read new entries level by level
(CRITICAL first, see ``priority``), count an attempt for each (``begin.lua``),
run the handlers in priority order, then settle the whole round in one step per
partition (``settle.lua``: ack, or schedule a retry, or dead-letter).

A crash anywhere leaves the entries pending; they are claimed again after
``claim_idle_ms``, so nothing is lost, and handlers keyed on the event id make
the redelivery harmless. SIGTERM (``stop``) lets the current round finish.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ledger.tasks import Priority

from . import keys
from .codec import EventMessage, Message, TaskMessage, decode, event_data, message_id
from .connection import RedisClient, ensure_groups, is_cluster, translate
from .errors import DecodeError, Retry
from .handlers import NO_DATABASE, BoundDBManager, Handler
from .priority import per_partition, read_count
from .registry import HandlerRegistry, default_registry
from .retry import RetryPolicy
from .scripts import Scripts, load

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 2000


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig:
    group: str = "workers"
    levels: tuple[Priority, ...] = keys.LEVELS_DESC
    batch: int = 32
    block_ms: int = 500
    claim_idle_ms: int = 60_000
    reclaim_every_ms: int = 100
    status_ttl_s: int = 7 * 24 * 3600
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    allowed_collections: frozenset[str] = frozenset()


@dataclass(slots=True)
class Delivery:
    partition: int
    level: Priority
    entry_id: str
    fields: Mapping[bytes, bytes]
    attempts: int = 0


@dataclass(slots=True)
class Outcome:
    op: str  # ok | retry | dead | ack
    number: int = 0  # latency ms | delay ms | attempts
    error: str = ""


def consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"


class Worker:
    """Processes entries of ``config.levels`` in every partition."""

    def __init__(self, client: RedisClient, partitions: int, *,
                 db: BoundDBManager | None = None,
                 registry: HandlerRegistry = default_registry,
                 config: WorkerConfig | None = None, consumer: str | None = None,
                 scripts: Scripts | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis = client
        self.partitions = partitions
        self.db = db
        self.registry = registry
        self.config = config or WorkerConfig()
        self.consumer = consumer or consumer_name()
        self.scripts = scripts or load(client)
        self.clock = clock
        self.processed = 0
        self._stopping = threading.Event()
        self._next_reclaim = 0.0
        self._rand = random.Random()
        self._levels = tuple(sorted(self.config.levels, reverse=True))
        self._level_digits = "".join(str(self._rank_key(lv)) for lv in self._levels)
        ensure_groups(client, partitions, self.config.group, self._levels)

    @staticmethod
    def _rank_key(level: Priority) -> int:
        """1..4 for CRITICAL..LOW: the position of the level's stream in script KEYS."""
        return 5 - int(level)

    # -- lifecycle -----------------------------------------------------------
    def stop(self) -> None:
        """Finish the current round, then return from ``run``."""
        self._stopping.set()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.step(block=True)
            except Exception:  # keep consuming through Redis outages
                log.exception("worker round failed; retrying")
                self._stopping.wait(0.5)

    def run_until_idle(self, timeout: float = 30.0) -> int:
        """Process until nothing is left to do now or later (tests, ``--burst``)."""
        deadline = time.monotonic() + timeout
        total = 0
        while time.monotonic() < deadline:
            n = self.step(block=False)
            total += n
            if n == 0 and not self._waiting():
                return total
            if n == 0:
                time.sleep(self.config.reclaim_every_ms / 1000)
        raise TimeoutError(f"not idle after {timeout}s ({total} processed)")

    def _waiting(self) -> bool:
        """Entries still owed a retry, or pending anywhere in the group."""
        with translate():
            pipe = self.redis.pipeline(transaction=False)
            for p in range(self.partitions):
                pipe.zcard(keys.retry(p, self.config.group))
                for level in self._levels:
                    pipe.xpending(keys.stream(p, level), self.config.group)
            replies = pipe.execute()
        return any((r if isinstance(r, int) else r["pending"]) for r in replies)

    # -- one round ------------------------------------------------------------
    def step(self, block: bool = False) -> int:
        deliveries = self._reclaim() + self._read()
        if not deliveries and block:
            deliveries = self._wait_for_work()
        if deliveries:
            self._process(deliveries)
        return len(deliveries)

    def _reclaim(self) -> list[Delivery]:
        now = time.monotonic()
        if now < self._next_reclaim:
            return []
        self._next_reclaim = now + self.config.reclaim_every_ms / 1000
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.partitions):
            self.scripts.reclaim(
                keys=[keys.retry(p, self.config.group), keys.attempts(p), keys.cursor(p),
                      *(keys.stream(p, lv) for lv in keys.LEVELS_DESC)],
                args=[self.config.group, self.consumer, self.config.claim_idle_ms,
                      self.config.batch, self._level_digits],
                client=pipe,
            )
        with translate():
            replies = pipe.execute()
        out = []
        for p, flat in enumerate(replies):
            for i in range(0, len(flat), 3):
                level = keys.LEVELS_DESC[int(flat[i]) - 1]
                out.append(Delivery(partition=p, level=level, entry_id=flat[i + 1].decode(),
                                    fields=_pairs(flat[i + 2])))
        return out

    def _read(self) -> list[Delivery]:
        out: list[Delivery] = []
        for rank, level in enumerate(self._levels):
            count = per_partition(read_count(self.config.batch, len(out), rank),
                                  self.partitions)
            pipe = self.redis.pipeline(transaction=False)
            for p in range(self.partitions):
                pipe.xreadgroup(self.config.group, self.consumer,
                                {keys.stream(p, level): ">"}, count=count)
            with translate():
                replies = pipe.execute()
            for reply in replies:
                out.extend(_deliveries(reply))
        return out

    def _wait_for_work(self) -> list[Delivery]:
        """Block until anything arrives (single node), or nap (Cluster)."""
        wait_ms = min(self.config.block_ms, self.config.reclaim_every_ms)
        if is_cluster(self.redis):
            self._stopping.wait(wait_ms / 1000)
            return []
        streams = {keys.stream(p, lv): ">" for lv in self._levels
                   for p in range(self.partitions)}
        with translate():
            reply = self.redis.xreadgroup(self.config.group, self.consumer, streams,
                                          count=self.config.batch, block=wait_ms)
        return _deliveries(reply)

    # -- processing -------------------------------------------------------------
    def _process(self, deliveries: list[Delivery]) -> None:
        by_partition: dict[int, list[Delivery]] = defaultdict(list)
        for d in deliveries:
            by_partition[d.partition].append(d)
        decoded: dict[int, Message | DecodeError] = {}
        for d in deliveries:
            try:
                decoded[id(d)] = decode(d.fields)
            except DecodeError as exc:
                decoded[id(d)] = exc
        self._begin(by_partition, decoded)
        outcomes: dict[int, Outcome] = {}
        for d in sorted(deliveries, key=lambda d: (-int(d.level), d.entry_id)):
            outcomes[id(d)] = self._run_one(d, decoded[id(d)])
        self._settle(by_partition, decoded, outcomes)
        self.processed += sum(1 for o in outcomes.values() if o.op == "ok")

    def _task_key(self, p: int, message: Message | DecodeError) -> str:
        if isinstance(message, TaskMessage):
            return keys.task(p, message.task_id)
        return keys.attempts(p)

    def _begin(self, by_partition: Mapping[int, Sequence[Delivery]],
               decoded: Mapping[int, Message | DecodeError]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        order = list(by_partition.items())
        for p, ds in order:
            self.scripts.begin(
                keys=[keys.attempts(p), *(self._task_key(p, decoded[id(d)]) for d in ds)],
                args=[self.config.group, *(d.entry_id for d in ds)], client=pipe)
        with translate():
            replies = pipe.execute()
        for (_, ds), counts in zip(order, replies, strict=True):
            for d, n in zip(ds, counts, strict=True):
                d.attempts = int(n)

    def _run_one(self, d: Delivery, message: Message | DecodeError) -> Outcome:
        if d.attempts < 0:
            return Outcome("ack")
        if isinstance(message, DecodeError):
            return Outcome("dead", d.attempts, f"poison entry: {message}")
        if d.attempts > self.config.retry.max_attempts:
            return Outcome("dead", d.attempts,
                           f"gave up after {d.attempts - 1} attempts (worker crashed or timed out)")
        key = message_id(message)
        started_ms = int(self.clock() * 1000)
        try:
            handler, data = self._handler_for(message)
            db = self.db.for_event(key) if self.db is not None else NO_DATABASE
            ok = handler(data, db)
            if ok is False:
                raise RuntimeError("handler returned False")
        except Retry as exc:
            return self._failed(d, str(exc), exc.delay_ms)
        except Exception as exc:
            return self._failed(d, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS], None)
        born = (message.enqueued_at_ms if isinstance(message, TaskMessage)
                else message.event.at_ms)
        return Outcome("ok", max(0, int(self.clock() * 1000) - min(born, started_ms)))

    def _handler_for(self, message: Message) -> tuple[Handler, Mapping[str, Any]]:
        if isinstance(message, EventMessage):
            return self.registry.resolve_event(message.event.kind), event_data(message.event)
        found = self.registry.resolve_task(message.task_type, message.data,
                                           self.config.allowed_collections)
        if found is None:
            raise LookupError(f"no handler registered for task type {message.task_type!r}")
        return found, message.data

    def _failed(self, d: Delivery, error: str, delay_ms: int | None) -> Outcome:
        policy = self.config.retry
        if policy.exhausted(d.attempts):
            return Outcome("dead", d.attempts, error)
        delay = delay_ms if delay_ms is not None else policy.backoff_ms(d.attempts, self._rand)
        log.info("entry %s failed (attempt %d), retry in %d ms: %s",
                 d.entry_id, d.attempts, delay, error)
        return Outcome("retry", delay, error)

    def _settle(self, by_partition: Mapping[int, Sequence[Delivery]],
                decoded: Mapping[int, Message | DecodeError],
                outcomes: Mapping[int, Outcome]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for p, ds in by_partition.items():
            args: list[Any] = [self.config.group, self.config.status_ttl_s, keys.tag(p) + ":"]
            for d in ds:
                o, message = outcomes[id(d)], decoded[id(d)]
                queue = "unknown" if isinstance(message, DecodeError) else message.queue_name
                args += [o.op, self._rank_key(d.level), d.entry_id, queue, o.number, o.error]
            self.scripts.settle(
                keys=[keys.attempts(p), keys.stats(p), keys.retry(p, self.config.group),
                      keys.dead(p), *(keys.stream(p, lv) for lv in keys.LEVELS_DESC),
                      *(self._task_key(p, decoded[id(d)]) for d in ds)],
                args=args, client=pipe)
        with translate():
            pipe.execute()


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def _deliveries(reply: Any) -> list[Delivery]:
    """Deliveries from an XREADGROUP reply."""
    out: list[Delivery] = []
    for stream, entries in reply or []:
        p, level = keys.parse_stream(stream.decode())
        for entry_id, fields in entries:
            if fields:  # None: deleted before it could be delivered
                out.append(Delivery(partition=p, level=level, entry_id=entry_id.decode(),
                                    fields=fields))
    return out
