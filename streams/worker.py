"""A consumer in a group over every priority stream: read, run, settle.

One round: claim what is due for another attempt (failed entries whose backoff
ran out, when it runs out; entries of consumers that died, swept for every
``sweep_every_ms``: ``Housekeeping``, one per process), read new entries level by
level (CRITICAL first, see ``per_partition`` and ``lua/read.lua``) — or, after a
round that read less than a batch, block at once on every stream — count an
attempt for each claimed entry (``begin.lua``; a fresh one is attempt 1 and
costs no call), run the handlers in priority order, then settle the whole round
in one step per partition (``settle.lua``: ack, or schedule a retry, or
dead-letter, and the task's status; a completed task's record shrinks to a field
of a done bucket, ``streams.finished``). Queue statistics are added up in the
process and written once per ``stats_every_ms`` (``Stats``). The sweep also
deletes completed tasks' stream entries once every group is past them
(``Pruner``) and drops done buckets past the status retention.

A crash anywhere leaves the entries pending; they are claimed again after
``claim_idle_ms``, so nothing is lost, and handlers keyed on the event id make
the redelivery harmless. The dead consumer itself leaves the group once it
holds nothing and has been idle for ``WorkerConfig.forget_after_ms``
(``lua/forget.lua``, run now and then from the reclaim step). SIGTERM
(``stop``) lets the current round finish.
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
from functools import partial
from typing import Any

from redis.typing import KeyT, StreamIdT

from ledger.tasks import Priority

from . import finished, keys
from .codec import EventMessage, Message, TaskMessage, decode
from .connection import RedisClient, ensure_groups, is_cluster, translate
from .dependencies import Releaser
from .errors import DecodeError, Unavailable
from .handlers import BoundDBManager
from .ids import parse_id
from .keepalive import KeepAlive
from .outcomes import (
    Acknowledged,
    DeadLettered,
    NotRun,
    Outcome,
    RetryLater,
    Skipped,
    Succeeded,
    begun,
    settle_args,
)
from .processor import MAX_ERROR_CHARS, Delivery, Processor, TaskProcessor
from .prune import Pruner
from .registry import HandlerRegistry, default_registry
from .replies import text
from .retry import RetryPolicy
from .scripts import ScriptArg, Scripts, load, run_many

log = logging.getLogger(__name__)

MAX_BLOCK_MS = 1000
"""The longest single blocking read (``_wait_for_work``), whatever ``block_ms``."""

FORGET_FLOOR_MS = 60_000
"""The least silence after which a consumer is removed by default (``WorkerConfig``)."""


def per_partition(count: int, partitions: int) -> int:
    """Each partition's equal share of a round's ``count`` (at least one).

    Within a partition ``lua/read.lua`` reads the levels highest first, each taking
    what is left of the share, and each lower level still gets one read when the
    higher ones filled it: CRITICAL is served first, and LOW never starves.
    """
    return max(1, -(-count // partitions))


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig:
    group: str = "workers"
    levels: tuple[Priority, ...] = keys.LEVELS_DESC
    batch: int = 128
    block_ms: int = 500
    claim_idle_ms: int = 60_000
    reclaim_every_ms: int = 100
    forget_idle_ms: int | None = None
    """Remove a consumer of the group that holds nothing and has not touched a stream
    for this long (``lua/forget.lua``); None: ``forget_after_ms``'s default."""
    status_ttl_s: int = 7 * 24 * 3600
    """How long the status of a finished (completed or failed) task stays answerable
    (``ledger worker --status-ttl-s``, ``LEDGER_STATUS_TTL_S``); a completed task's
    compact record (``streams.finished``) up to an eighth longer. A task enqueued with
    an Idempotency-Key keeps its record at least ``idempotency_ttl_s`` from its enqueue
    too, so that a repeat still finds it (``lua/settle.lua``)."""
    idempotency_ttl_s: int = 7 * 24 * 3600
    """``StreamsConfig.idempotency_ttl_s`` (``QueueManager.worker`` passes it)."""
    stats_every_ms: int = 1000
    """How often a running worker writes the queue statistics it added up
    (``Stats``); a round run with ``step(block=False)`` writes them at its end."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    allowed_collections: frozenset[str] = frozenset()
    track: bool = True
    """Keep task status and queue stats (the ``workers`` group); projectors don't."""

    @property
    def forget_after_ms(self) -> int:
        """How long a consumer with no pending entry may stay idle before it is
        removed from the group: ``forget_idle_ms``, else ten times ``claim_idle_ms``
        and at least a minute. A live consumer is never idle that long (it touches
        itself every ``forget_every_ms``, see ``lua/forget.lua``), and
        ``claim_idle_ms`` after its death a dead one's entries were taken over."""
        if self.forget_idle_ms is not None:
            return self.forget_idle_ms
        return max(10 * self.claim_idle_ms, FORGET_FLOOR_MS)

    @property
    def sweep_every_ms(self) -> int:
        """How often a process looks for entries that dead consumers left pending
        (XAUTOCLAIM on every stream) and for retries it does not know of (those of
        another process that died): a quarter of ``claim_idle_ms``, at most 15 s, at
        least ``reclaim_every_ms``. An entry is only taken over ``claim_idle_ms``
        after its consumer went silent, so sweeping more often finds nothing sooner.
        Retries this process scheduled are claimed when due (``Housekeeping``)."""
        return max(self.reclaim_every_ms, min(self.claim_idle_ms // 4, 15_000))

    @property
    def forget_every_ms(self) -> int:
        """How often a consumer looks for dead ones (and touches itself): half the
        threshold, at most 30 s."""
        return max(self.reclaim_every_ms, min(self.forget_after_ms // 2, 30_000))


LATENCIES_KEPT = 512
"""Latest latencies kept per partition and queue (``ledger:{T}:lat:<queue>``)."""


@dataclass(slots=True)
class Stats:
    """Queue statistics of settled entries, added up in the worker and written once
    per ``WorkerConfig.stats_every_ms`` (``Worker.flush_stats``): counters
    (``processed|failed|retried|dead:<queue>``), latest latencies and 10-second
    throughput buckets, per partition. A SIGKILL loses what was not written yet
    (at most one interval); task status is written by settle.lua, never here."""

    counts: dict[tuple[keys.Partition, str], int] = field(default_factory=dict)
    latencies: dict[tuple[keys.Partition, str], list[int]] = field(default_factory=dict)

    def empty(self) -> bool:
        return not self.counts and not self.latencies

    def count(self, p: keys.Partition, queue: str, outcome: Outcome) -> None:
        match outcome:
            case Succeeded(latency_ms):
                self._add(p, f"processed:{queue}")
                self.latencies.setdefault((p, queue), []).append(latency_ms)
            case RetryLater():
                self._add(p, f"failed:{queue}")
                self._add(p, f"retried:{queue}")
            case DeadLettered():
                self._add(p, f"failed:{queue}")
                self._add(p, f"dead:{queue}")
            case _:
                pass

    def _add(self, p: keys.Partition, field_: str, n: int = 1) -> None:
        self.counts[(p, field_)] = self.counts.get((p, field_), 0) + n

    def merge(self, other: Stats) -> None:
        for (p, f), n in other.counts.items():
            self._add(p, f, n)
        for k, values in other.latencies.items():
            self.latencies[k] = [*values, *self.latencies.get(k, [])][-LATENCIES_KEPT:]

    def write(self, client: RedisClient, bucket: int) -> None:
        """One pipelined round trip (per Cluster node): HINCRBY the counters, LPUSH
        the latencies (LTRIM to the latest ``LATENCIES_KEPT``), HINCRBY the current
        throughput bucket and drop the one two minutes old."""
        pipe = client.pipeline(transaction=False)
        for (p, f), n in self.counts.items():
            pipe.hincrby(keys.stats(p), f, n)
        for (p, queue), values in self.latencies.items():
            lat, tput = keys.latencies(p, queue), keys.throughput(p, queue)
            pipe.lpush(lat, *values[-LATENCIES_KEPT:])
            pipe.ltrim(lat, 0, LATENCIES_KEPT - 1)
            pipe.hincrby(tput, str(bucket), len(values))
            pipe.hdel(tput, str(bucket - 12))
        pipe.execute()


@dataclass(slots=True)
class Housekeeping:
    """When the consumers of one process (one group) next look for work to take over.

    One instance is shared by the consumer threads of a process
    (``QueueManager.start_workers``), so one of them sweeps for all: every
    ``sweep_every_ms`` the sweep runs ``lua/reclaim.lua`` on every partition
    (due retries, and XAUTOCLAIM of entries idle for ``claim_idle_ms``); between
    sweeps only partitions with a retry due now are looked at (``due``: the
    monotonic time of each partition's earliest retry, from settling a retry and
    from what ``reclaim.lua`` reports is left)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    next_sweep: float = 0.0
    due: dict[keys.Partition, float] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    """Not yet written (``Worker.flush_stats``), under ``lock``."""
    next_flush: float = 0.0
    keepalive: KeepAlive | None = None
    """Renews the claims of the rounds running in this process (the first worker
    made with this housekeeping creates it)."""
    pruner: Pruner = field(default_factory=Pruner)
    """The completed task entries this process will delete from their streams."""
    scales: finished.Scales = field(default_factory=finished.Scales)
    """How many done buckets completed tasks are spread over now, per partition."""

    def retry_at(self, p: keys.Partition, at: float) -> None:
        with self.lock:
            self.due[p] = min(self.due.get(p, at), at)

    def take(
        self, now: float, every_s: float, parts: Sequence[keys.Partition]
    ) -> tuple[bool, list[keys.Partition]]:
        """(sweep?, the partitions to look at now); they leave ``due``."""
        with self.lock:
            if now >= self.next_sweep:
                self.next_sweep = now + every_s
                self.due.clear()
                return True, list(parts)
            ready = [p for p, at in self.due.items() if at <= now]
            for p in ready:
                del self.due[p]
            return False, ready

    def failed(self, sweep: bool, parts: Sequence[keys.Partition], now: float) -> None:
        """The look failed: look again next round."""
        with self.lock:
            if sweep:
                self.next_sweep = now
            for p in parts:
                self.due[p] = now

    def next_at(self) -> float:
        """When a consumer should next look (retries, a sweep, stats to write)."""
        with self.lock:
            flush = [] if self.stats.empty() else [self.next_flush]
            return min([self.next_sweep, *self.due.values(), *flush])


def consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"


class Worker:
    """Processes entries of ``config.levels`` in every partition."""

    def __init__(
        self,
        client: RedisClient,
        partitions: int,
        *,
        db: BoundDBManager | None = None,
        registry: HandlerRegistry = default_registry,
        config: WorkerConfig | None = None,
        consumer: str | None = None,
        scripts: Scripts | None = None,
        processor: Processor | None = None,
        clock: Callable[[], float] = time.time,
        housekeeping: Housekeeping | None = None,
    ) -> None:
        self.redis = client
        self.partitions = partitions
        self._parts = keys.partitions(partitions)
        self.config = config or WorkerConfig()
        self.processor = processor or TaskProcessor(registry, db, self.config.allowed_collections)
        self.consumer = consumer or consumer_name()
        self.scripts = scripts or load(client)
        self.clock = clock
        self.processed = 0
        self.stopping = threading.Event()
        self.housekeeping = housekeeping or Housekeeping()
        with self.housekeeping.lock:
            if self.housekeeping.keepalive is None:
                self.housekeeping.keepalive = KeepAlive(
                    client, self.scripts, max(1, self.config.claim_idle_ms // 4)
                )
            self.keepalive = self.housekeeping.keepalive
        self._quiet = False
        """The last round read less than a batch: the next one blocks at once."""
        self._rand = random.Random()
        self.forgotten = 0
        """Dead consumers this one removed from the group (``_forget``)."""
        # a random phase: consumers started together do not all look at once
        self._next_forget = time.monotonic() + self._rand.uniform(
            0, self.config.forget_every_ms / 1000
        )
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
        self.stopping.set()

    def run(self) -> None:
        with self.keepalive.running():
            while not self.stopping.is_set():
                try:
                    self.step(block=True)
                except Exception:  # keep consuming through Redis outages
                    log.exception("worker round failed; retrying")
                    self.stopping.wait(0.5)
            self.flush_stats()
            self.prune()

    def run_until_idle(self, timeout: float = 30.0) -> int:
        """Process until nothing is left to do now or later (tests, ``--burst``)."""
        deadline = time.monotonic() + timeout
        total = 0
        with self.keepalive.running():
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
            for p in self._parts:
                pipe.zcard(keys.retry(p, self.config.group))
                for level in self._levels:
                    pipe.xpending(keys.stream(p, level), self.config.group)
            replies = pipe.execute()
        return any((r if isinstance(r, int) else r["pending"]) for r in replies)

    # -- one round ------------------------------------------------------------
    def step(self, block: bool = False) -> int:
        """One round. Blocking, after a round that read less than a batch, it skips
        the sweep of every partition (``_read``) and waits on every stream at once
        (``_wait_for_work``): what it returns is all there was."""
        claimed = self._reclaim()
        if block and self._quiet and not claimed and not is_cluster(self.redis):
            fresh = self._wait_for_work()
        else:
            fresh = self._read()
            if block and not claimed and not fresh:
                fresh = self._wait_for_work()
        self._quiet = len(fresh) < self.config.batch
        if claimed or fresh:
            self._process(claimed, fresh)
        if not block or time.monotonic() >= self.housekeeping.next_flush:
            self.flush_stats()
            self.prune()
        return len(claimed) + len(fresh)

    def _reclaim(self) -> list[Delivery]:
        """Entries due for another attempt: on every partition each
        ``sweep_every_ms`` (also those of dead consumers), else on those with a
        retry due now (``Housekeeping``)."""
        now = time.monotonic()
        if now >= self._next_forget:  # before claiming: a failure here loses no claim
            self._next_forget = now + self.config.forget_every_ms / 1000
            self._forget()
        hk = self.housekeeping
        sweep, parts = hk.take(now, self.config.sweep_every_ms / 1000, self._parts)
        if not parts:
            return []
        try:
            with translate():
                replies = run_many(
                    self.redis,
                    [
                        (
                            self.scripts.reclaim,
                            [
                                keys.retry(p, self.config.group),
                                keys.attempts(p),
                                keys.cursor(p),
                                *(keys.stream(p, lv) for lv in keys.LEVELS_DESC),
                            ],
                            [
                                self.config.group,
                                self.consumer,
                                self.config.claim_idle_ms,
                                self.config.batch,
                                self._level_digits if sweep else "",
                            ],
                        )
                        for p in parts
                    ],
                )
        except BaseException:
            hk.failed(sweep, parts, now)
            raise
        after = time.monotonic()
        for p, flat in zip(parts, replies, strict=True):
            wait_ms = int(flat[0])  # until the partition's next retry is due; -1: none
            if wait_ms >= 0:
                hk.retry_at(p, after + wait_ms / 1000)
        if sweep and self.config.track:  # outbox entries a dead process left
            self._release(parts, self.config.claim_idle_ms)
            self._drop_done_buckets()
        return _flat_deliveries(parts, [flat[1:] for flat in replies])

    def _drop_done_buckets(self) -> None:
        """Completed tasks' statuses past the retention go (``streams.finished``);
        housekeeping: a failure is logged, and the next sweep tries again."""
        try:
            finished.drop_expired(self.redis, self._parts, int(self.clock() * 1000))
        except Exception as exc:
            log.warning("dropping expired done buckets failed: %s", exc)

    def prune(self) -> None:
        """Delete the completed task entries every group is past (``streams.prune``);
        housekeeping: a failure is logged, and what was left is kept for next time."""
        try:
            self.housekeeping.pruner.prune(self.redis)
        except Exception as exc:
            log.warning("deleting completed task entries failed: %s", exc)

    def _forget(self) -> None:
        """Remove the group's dead consumers: those that hold no pending entry (theirs
        were taken over) and have been idle for ``forget_after_ms``, on every stream
        of every partition, one atomic ``lua/forget.lua`` call per partition; and
        touch this consumer, so that it never looks dead however quiet the streams.
        Housekeeping: a failure is logged, never fails the round."""
        group = self.config.group
        streams = [[keys.stream(p, lv) for lv in keys.LEVELS_DESC] for p in self._parts]
        try:
            with translate():
                replies = run_many(
                    self.redis,
                    [
                        (
                            self.scripts.forget,
                            names,
                            [group, self.config.forget_after_ms, self.consumer],
                        )
                        for names in streams
                    ],
                )
        except Exception as exc:
            log.warning("looking for dead consumers of %s failed: %s", group, exc)
            return
        for names, flat in zip(streams, replies, strict=True):
            for i in range(0, len(flat), 3):
                self.forgotten += 1
                log.info(
                    "removed consumer %s from group %s on %s: nothing pending, silent for %d ms",
                    text(flat[i + 1]),
                    group,
                    names[int(flat[i]) - 1],
                    int(flat[i + 2]),
                )

    def _read(self) -> list[Delivery]:
        share = per_partition(self.config.batch, self.partitions)
        with translate():
            replies = run_many(
                self.redis,
                [
                    (
                        self.scripts.read,
                        [keys.stream(p, lv) for lv in keys.LEVELS_DESC],
                        [self.config.group, self.consumer, share, self._level_digits],
                    )
                    for p in self._parts
                ],
            )
        return _flat_deliveries(self._parts, replies)

    def _wait_for_work(self) -> list[Delivery]:
        """Block until anything arrives (single node), or nap (Cluster), for at most
        ``block_ms`` and not past the next look for retries or dead consumers. Each
        stream gives at most its partition's share of a batch (as ``_read``)."""
        until = min(self.housekeeping.next_at(), self._next_forget)
        left_ms = int((until - time.monotonic()) * 1000)
        # BLOCK 0 would wait for ever; a long one may outlast a client's socket timeout
        wait_ms = max(1, min(self.config.block_ms, MAX_BLOCK_MS, left_ms))
        if is_cluster(self.redis):
            wait_ms = max(1, min(wait_ms, self.config.reclaim_every_ms))
            self.stopping.wait(wait_ms / 1000)
            return []
        streams: dict[KeyT, StreamIdT] = {
            keys.stream(p, lv): ">" for lv in self._levels for p in self._parts
        }
        share = per_partition(self.config.batch, self.partitions)
        with translate():
            reply = self.redis.xreadgroup(
                self.config.group, self.consumer, streams, count=share, block=wait_ms
            )
        return _deliveries(reply)

    # -- processing -------------------------------------------------------------
    def _process(self, claimed: list[Delivery], fresh: list[Delivery]) -> None:
        """Begin, run and settle a round; its claims are renewed meanwhile
        (``streams.keepalive``), so a slow handler is never taken over while
        this process lives."""
        deliveries = [*claimed, *fresh]
        with self.keepalive.holding(self.config.group, self.consumer, deliveries):
            self._run_round(claimed, fresh)

    def _run_round(self, claimed: list[Delivery], fresh: list[Delivery]) -> None:
        """``claimed`` entries (delivered before) count their attempt in
        ``begin.lua``; ``fresh`` ones (read with ``>``: never delivered, so ours)
        are attempt 1 with no call, a crash during it being counted when the entry
        is claimed, and a task read this way shows as processing from the
        stream's pending list (``status.task_status``)."""
        deliveries = [*claimed, *fresh]
        by_partition: dict[keys.Partition, list[Delivery]] = defaultdict(list)
        for d in deliveries:
            by_partition[d.partition].append(d)
            try:
                d.message = decode(d.fields)
            except DecodeError as exc:
                d.message = exc
        for d in fresh:
            d.attempts = 1
        self._skip_ended(fresh)
        if claimed:
            to_begin: dict[keys.Partition, list[Delivery]] = defaultdict(list)
            for d in claimed:
                to_begin[d.partition].append(d)
            self._begin(to_begin)
        runnable = []
        for d in deliveries:
            if d.not_run is NotRun.TAKEN_OVER:
                d.outcome = Skipped()
            elif d.not_run is NotRun.COMPLETED:
                d.outcome = Acknowledged()
            elif isinstance(d.message, DecodeError):
                d.outcome = DeadLettered(d.attempts, f"poison entry: {d.message}")
            elif d.attempts > self.config.retry.max_attempts:
                d.outcome = DeadLettered(
                    d.attempts,
                    f"gave up after {d.attempts - 1} attempts (consumer crashed or timed out)",
                )
            else:
                runnable.append(d)
        # stream order is numeric (ms, seq): as text "…-10" would run before "…-2"
        runnable.sort(key=lambda d: (-int(d.level), parse_id(d.entry_id)))
        started_ms = int(self.clock() * 1000)
        try:
            self.processor.process(runnable)
        except Exception as exc:  # the whole batch failed (e.g. the database is down)
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            for d in runnable:
                if not d.done:
                    d.error = d.error or error
        now_ms = int(self.clock() * 1000)
        for d in runnable:
            if d.done:
                born = min(_born_ms(d.message), started_ms)
                d.outcome = (
                    Succeeded(max(0, now_ms - born)) if self.config.track else Acknowledged()
                )
            else:
                d.outcome = self._failed(d, d.error or "not processed", d.retry_delay_ms)
        self._settle_patiently(by_partition)
        self.processed += sum(1 for d in runnable if d.done)
        settled = time.monotonic()
        for d in runnable:
            if isinstance(d.outcome, RetryLater):  # claimed again when due (``_reclaim``)
                self.housekeeping.retry_at(d.partition, settled + d.outcome.delay_ms / 1000)

    def _settle_patiently(self, by_partition: Mapping[keys.Partition, Sequence[Delivery]]) -> None:
        """``_settle``, sent again while Redis does not take it (a slot mid-migration
        for longer than ``run_many`` waits, a lost reply, a failover), for up to
        ``claim_idle_ms`` unless stopping. Dropping a round's outcome would leave its
        entries pending, to be claimed and run once more. Sent twice (its first reply
        lost), it settles nothing twice: settle.lua skips what is no longer pending for
        this consumer (acknowledged, or claimed by another one meanwhile); only a retry,
        which stays pending, is rescheduled and counted in the stats again."""
        deadline = time.monotonic() + self.config.claim_idle_ms / 1000
        delay = 0.05
        while True:
            try:
                self._settle(by_partition)
                return
            except Unavailable as exc:
                if self.stopping.is_set() or time.monotonic() + delay > deadline:
                    raise
                log.warning("settling a round failed (%s); again in %.2fs", exc, delay)
            time.sleep(delay)
            delay = min(2 * delay, 1.0)

    def _per_task(self, p: keys.Partition, d: Delivery, key: Callable[[str], str]) -> str:
        """``key(task id)`` for a tracked task's entry: its status hash, children set
        or done bucket, as begin/settle take them; for any other entry the
        attempts hash, which those scripts read as "not a task"."""
        if self.config.track and isinstance(d.message, TaskMessage):
            return key(d.message.task_id)
        return keys.attempts(p)

    def _begin(self, by_partition: Mapping[keys.Partition, Sequence[Delivery]]) -> None:
        order = list(by_partition.items())
        with translate():
            replies = run_many(
                self.redis,
                [
                    (
                        self.scripts.begin,
                        [
                            keys.attempts(p),
                            *(self._per_task(p, d, partial(keys.task, p)) for d in ds),
                            *(keys.stream(p, d.level) for d in ds),
                        ],
                        [
                            self.config.group,
                            self.consumer,
                            *(f"{self._rank_key(d.level)}|{d.entry_id}" for d in ds),
                        ],
                    )
                    for p, ds in order
                ],
            )
        for (_, ds), counts in zip(order, replies, strict=True):
            for d, n in zip(ds, counts, strict=True):
                answer = begun(int(n))
                if isinstance(answer, NotRun):
                    d.not_run = answer
                else:
                    d.attempts = answer

    def _skip_ended(self, fresh: Sequence[Delivery]) -> None:
        """A fresh entry of a task cancelled while queued (or completed already, its
        entry added again by hand) is acknowledged, not run: one pipelined HGET per
        task, what ``begin.lua`` checks for a claimed one."""
        if not self.config.track:
            return
        tasks = [(d, d.message) for d in fresh if isinstance(d.message, TaskMessage)]
        if not tasks:
            return
        with translate():
            pipe = self.redis.pipeline(transaction=False)
            for d, m in tasks:
                pipe.hget(keys.task(d.partition, m.task_id), "status")
            replies = pipe.execute()
        # no hash: completed (a compact record, ``streams.finished``), or a record
        # that expired before its task ran (rare: ask for those only)
        pairs = list(zip(tasks, replies, strict=True))
        unknown = [(d.partition, m.task_id) for (d, m), status in pairs if status is None]
        compact = finished.lookup_many(self.redis, unknown, int(self.clock() * 1000))
        for (d, m), status in pairs:
            if status in (b"completed", b"cancelled") or (status is None and m.task_id in compact):
                d.not_run = NotRun.COMPLETED

    def _failed(self, d: Delivery, error: str, delay_ms: int | None) -> Outcome:
        policy = self.config.retry
        if policy.exhausted(d.attempts):
            return DeadLettered(d.attempts, error)
        delay = delay_ms if delay_ms is not None else policy.backoff_ms(d.attempts, self._rand)
        log.info(
            "entry %s failed (attempt %d), retry in %d ms: %s", d.entry_id, d.attempts, delay, error
        )
        return RetryLater(delay, error)

    def _settle(self, by_partition: Mapping[keys.Partition, Sequence[Delivery]]) -> None:
        order = list(by_partition.items())
        calls = []
        families: list[finished.Family] = []
        span = finished.span(int(self.clock() * 1000), self.config.status_ttl_s)
        for p, ds in order:
            entries: list[ScriptArg] = []
            for d in ds:
                op, number, error = settle_args(d.outcome or RetryLater(0, "no outcome"))
                entries += [
                    op,
                    self._rank_key(d.level),
                    d.entry_id,
                    _queue(d),
                    number,
                    error,
                    d.attempts,
                ]
            scale = self.housekeeping.scales.scale(p, span)
            done = finished.family(p, span, self.config.status_ttl_s, scale)
            families.append(done)
            calls.append(
                (
                    self.scripts.settle,
                    [
                        keys.attempts(p),
                        keys.retry(p, self.config.group),
                        keys.dead(p),
                        *(keys.stream(p, lv) for lv in keys.LEVELS_DESC),
                        keys.outbox(p),
                        keys.done_index(p),
                        *(self._per_task(p, d, partial(keys.task, p)) for d in ds),
                        *(self._per_task(p, d, partial(keys.children, p)) for d in ds),
                        *(self._per_task(p, d, done.part_for) for d in ds),
                    ],
                    [
                        self.config.group,
                        self.config.status_ttl_s,
                        self.consumer,
                        self.config.idempotency_ttl_s,
                        done.name,
                        done.drop_at_ms,
                        done.expire_at_ms,
                        *entries,
                    ],
                )
            )
        with translate():
            replies = run_many(self.redis, calls)
        stats = self.housekeeping.stats
        told = []
        with self.housekeeping.lock:
            for (p, ds), flags, done in zip(order, replies, families, strict=True):
                # after one flag per entry: outbox entries written, the fullest bucket
                self.housekeeping.scales.observe(p, done.span, done.scale, int(flags[-1]))
                for d, settled in zip(ds, flags[:-2], strict=True):
                    if int(settled) and d.outcome is not None:
                        stats.count(p, _queue(d), d.outcome)
                        if isinstance(d.outcome, Succeeded) and isinstance(d.message, TaskMessage):
                            self.housekeeping.pruner.completed(p, d.level, d.entry_id)
                if int(flags[-2]):
                    told.append(p)
        if told:
            self._release(told)

    def _release(self, parts: Sequence[keys.Partition], min_idle_ms: int = -1) -> None:
        """Tell waiting tasks that their parents ended (``streams.dependencies``):
        at once after a settle that wrote outbox entries, and from the sweep for
        entries a dead process left (``min_idle_ms``). Its failure is logged: the
        entries stay in the outbox for the next sweep."""
        try:
            Releaser(self.redis, self.scripts, self.partitions, self.consumer).drain(
                parts, min_idle_ms
            )
        except Exception as exc:
            log.warning("releasing waiting tasks failed (the next sweep retries): %s", exc)

    def flush_stats(self) -> None:
        """Write the counters, latencies and throughput added up since the last
        flush (``Stats``); a failure keeps them for the next one."""
        hk = self.housekeeping
        with hk.lock:
            taken, hk.stats = hk.stats, Stats()
            hk.next_flush = time.monotonic() + self.config.stats_every_ms / 1000
        if taken.empty():
            return
        try:
            with translate():
                taken.write(self.redis, int(self.clock() * 1000) // 10000)
        except Exception as exc:
            log.warning("writing queue stats failed (kept for the next try): %s", exc)
            with hk.lock:
                hk.stats.merge(taken)


def _queue(d: Delivery) -> str:
    return "unknown" if isinstance(d.message, DecodeError | None) else d.message.queue_name


def _born_ms(message: Message | DecodeError | None) -> int:
    if isinstance(message, TaskMessage):
        return message.enqueued_at_ms
    if isinstance(message, EventMessage):
        return message.event.at_ms
    return 0


def _flat_deliveries(
    parts: Sequence[keys.Partition], replies: Sequence[Sequence[Any]]
) -> list[Delivery]:
    """Deliveries from per-partition replies of (level digit, entry id, fields) triples."""
    out = []
    for p, flat in zip(parts, replies, strict=True):
        for i in range(0, len(flat), 3):
            out.append(
                Delivery(
                    partition=p,
                    level=keys.LEVELS_DESC[int(flat[i]) - 1],
                    entry_id=flat[i + 1].decode(),
                    fields=_pairs(flat[i + 2]),
                )
            )
    return out


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def _deliveries(reply: Any) -> list[Delivery]:
    """Deliveries from an XREADGROUP reply."""
    out: list[Delivery] = []
    for stream, entries in reply or []:
        p, level = keys.parse_stream(stream.decode())
        for entry_id, fields in entries:
            if fields:  # None: deleted before it could be delivered
                out.append(
                    Delivery(partition=p, level=level, entry_id=entry_id.decode(), fields=fields)
                )
    return out
