"""Delayed tasks and recurring schedules (``ledger scheduler``).

``tick`` moves delayed tasks onto their streams once due; ``fire`` fires the
recurring schedules due (``streams.schedules``), each tick once however many
schedulers run and however they die; ``expire_holds`` releases the credit
holds past their expiry (``streams.holds``), each exactly once.

Any number of schedulers may run: a due task leaves the schedule in the same
script step that appends it, and only if it is still there and due then, so it
is moved exactly once and never early. A scheduled task's record keeps its
data with no TTL until it is moved, so no delay (up to the 30-day bound) and no
scheduler downtime loses it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ledger.tasks import Priority

from . import keys, schedules
from .appender import Appender
from .config import StreamsConfig
from .connection import RedisClient, translate
from .holds import ExpiryStats, expire_due
from .replies import text
from .scripts import Call, Scripts, load, run_many

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        client: RedisClient,
        partitions: int,
        *,
        batch: int = 500,
        interval_ms: int = 50,
        scripts: Scripts | None = None,
        task_ttl_s: int = 7 * 24 * 3600,
        config: StreamsConfig | None = None,
    ) -> None:
        self.redis = client
        self.partitions = partitions
        self.batch = batch
        self.interval_ms = interval_ms
        self.scripts = scripts or load(client)
        self._stopping = threading.Event()
        self.task_ttl_s = task_ttl_s
        """TTL of a fired task's record (as ``StreamsConfig.idempotency_ttl_s``)."""
        self.fired = 0
        """Schedule ticks this scheduler fired (enqueued and recorded)."""
        self.missing = 0
        """Due tasks whose record was gone (deleted by hand): dropped, never counted as moved."""
        self.config = config or StreamsConfig(partitions=partitions)
        """For the expiries' appends (queue names, idempotency TTL, WAIT, hold limits)."""
        self._appender: Appender | None = None
        self.hold_stats = ExpiryStats()

    @property
    def holds_expired(self) -> int:
        """Holds this scheduler released at their expiry."""
        return self.hold_stats.expired

    def expire_holds(self) -> int:
        """Release every credit hold due now (``streams.holds.expire_due``)."""
        if self._appender is None:
            self._appender = Appender(self.redis, self.config, self.scripts)
        return expire_due(
            self.redis, self._appender, self.partitions, batch=self.batch, stats=self.hold_stats
        )

    def tick(self) -> int:
        """Move every task due now; returns how many moved (only those).

        Each round is two pipelined calls of ``schedule.lua`` per partition, so
        that every key it touches is declared (Redis Cluster): "due" lists the
        ids due, then "move" gets their record keys and moves each one still
        scheduled and due, in one atomic step per partition (so two schedulers
        never move a task twice). A round in which nothing is due is one round trip.
        """
        moved = 0
        while True:
            parts = keys.partitions(self.partitions)
            streams = {p: [keys.stream(p, lv) for lv in keys.LEVELS_DESC] for p in parts}
            with translate():
                due: list[list[bytes]] = run_many(
                    self.redis,
                    [
                        (
                            self.scripts.schedule,
                            [keys.scheduled(p), *streams[p]],
                            ["due", self.batch],
                        )
                        for p in parts
                    ],
                )
            found = {p: [i.decode() for i in ids] for p, ids in zip(parts, due, strict=True) if ids}
            if not found:
                return moved
            with translate():
                replies: list[list[Any]] = run_many(
                    self.redis,
                    [
                        (
                            self.scripts.schedule,
                            [
                                keys.scheduled(p),
                                *streams[p],
                                *(keys.task(p, task_id) for task_id in ids),
                            ],
                            ["move", *ids],
                        )
                        for p, ids in found.items()
                    ],
                )
            for count, missing in replies:
                moved += int(count)
                if missing:
                    self.missing += len(missing)
                    log.error(
                        "scheduled tasks due with no record (not run): %s",
                        ", ".join(m.decode() for m in missing),
                    )
            if max(len(ids) for ids in found.values()) < self.batch:
                return moved

    def fire(self) -> int:
        """Fire every recurring schedule due now; returns the ticks fired here.

        One round trip when nothing is due or unfinished ("due"); else the due
        schedules are claimed (one "claim" each, which only one scheduler wins
        per tick) and every claimed tick not yet enqueued — this pass's and any
        a dead scheduler left — is enqueued, then marked done (see
        ``streams.schedules``).
        """
        with translate():
            now, due, firing = run_many(
                self.redis,
                [(self.scripts.tick, [keys.SCHEDULES, keys.FIRING], ["due", self.batch])],
            )[0]
        names = [text(n) for n in due]
        claimed = self._claim(names, int(now)) if names else []
        unfinished = {text(n) for n in firing} | set(claimed)
        return self._finish(sorted(unfinished)) if unfinished else 0

    def _claim(self, names: list[str], now: int) -> list[str]:
        """Claim the due tick of each of ``names`` (cron math here, compare-and-set there)."""
        with translate():
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                pipe.hmget(keys.schedule(name), "cron", "timezone", "next_run_at")
            records = pipe.execute()
        calls: list[Call] = []
        for name, (cron, tz, tick) in zip(names, records, strict=True):
            if cron is None or tz is None or tick is None:
                continue  # removed since "due"
            try:
                nxt = schedules.next_tick(text(cron), text(tz), max(now, int(tick)))
            except Exception:
                log.exception("schedule %s: cannot compute its next tick", name)
                continue
            calls.append(
                (
                    self.scripts.tick,
                    [keys.SCHEDULES, keys.schedule(name), keys.FIRING, keys.firing(name)],
                    ["claim", name, int(tick), nxt, schedules.task_id(name, int(tick))],
                )
            )
        if not calls:
            return []
        with translate():
            replies = run_many(self.redis, calls)
        return [str(c[2][1]) for c, r in zip(calls, replies, strict=True) if text(r) == "ok"]

    def _finish(self, names: list[str]) -> int:
        """Enqueue the claimed ticks of ``names`` not yet enqueued, then mark them done."""
        return self._done(self._enqueue(names))

    def _enqueue(self, names: list[str]) -> list[tuple[str, str]]:
        """Enqueue the claimed task of each of ``names`` (a repeat is a "dup");
        returns (name, task id) for ``_done`` ("" where no claim was left)."""
        with translate():
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(keys.firing(name))
            records = pipe.execute()
        work: list[tuple[str, str]] = []
        enqueues: list[Call] = []
        for name, raw in zip(names, records, strict=True):
            f = {text(k): v for k, v in raw.items()}
            if "task_id" not in f:
                work.append((name, ""))  # a marker with no record: "done" drops it
                continue
            tid, tick = text(f["task_id"]), int(f["tick"])
            p = keys.partition_of(tid, self.partitions)
            prio = Priority(int(f["priority"]))
            enqueues.append(
                (
                    self.scripts.enqueue,
                    [keys.stream(p, prio), keys.task(p, tid), keys.scheduled(p)],
                    [
                        tid,
                        f["queue_name"],
                        f["task_type"],
                        f["data"],
                        int(prio),
                        0,
                        schedules.fingerprint(name, tick),
                        "1",
                        self.task_ttl_s,
                    ],
                )
            )
            work.append((name, tid))
        if enqueues:
            with translate():
                run_many(self.redis, enqueues)  # "ok", or "dup"/"reused": enqueued before
        return work

    def _done(self, work: list[tuple[str, str]]) -> int:
        """Drop the markers of enqueued ticks and record them; returns how many were ours."""
        with translate():
            done = run_many(
                self.redis,
                [
                    (
                        self.scripts.tick,
                        [keys.schedule(n), keys.FIRING, keys.firing(n), keys.SCHEDULE_STATS],
                        ["done", n, tid],
                    )
                    for n, tid in work
                ],
            )
        fired = sum(int(d) for d in done)
        self.fired += fired
        return fired

    def pending(self) -> int:
        """Tasks still waiting for their time."""
        with translate():
            pipe = self.redis.pipeline(transaction=False)
            for p in keys.partitions(self.partitions):
                pipe.zcard(keys.scheduled(p))
            return int(sum(pipe.execute()))

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick failed; retrying")
            try:
                self.fire()
            except Exception:
                log.exception("firing recurring schedules failed; retrying")
            try:
                self.expire_holds()
            except Exception:
                log.exception("expiring credit holds failed; retrying")
            self._stopping.wait(self.interval_ms / 1000)
