"""Projectors: one consumer group per read model, each a ``streams.Worker``
whose processor turns a round of entries into one bulk write.

Exactly once in effect: writes are version-guarded upserts or inserts keyed by
event id, so a redelivery, a reclaim after a crash or an out-of-order arrival
across priority streams changes nothing; the entries are acknowledged only
after the write (journaled) and the checkpoint. While MongoDB is unreachable
the projector waits and retries the same write with backoff, so an outage never
turns good events into dead letters; undecodable entries do go there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from pymongo import InsertOne, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, PyMongoError

from streams import keys
from streams.codec import EventMessage
from streams.connection import RedisClient
from streams.processor import Delivery
from streams.retry import RetryPolicy
from streams.worker import Worker, WorkerConfig

from . import checkpoints
from .archive import Archive
from .balances import Balances
from .projection import Insert, Projection, Recorded, Upsert, Write
from .scores import CreditScores
from .store import CHECKPOINTS, DUPLICATE_KEY, EVENTS, Document, StoreUnavailable, ensure_indexes

log = logging.getLogger(__name__)


def all_projections() -> list[Projection]:
    return [Balances(), CreditScores(), Archive()]


def group_of(projection: Projection) -> str:
    return f"proj:{projection.name}"


def to_operation(write: Write) -> InsertOne[Any] | UpdateOne:
    if isinstance(write, Insert):
        return InsertOne(dict(write.document))
    assert isinstance(write, Upsert)
    return UpdateOne(
        {"_id": write.key, "version": {"$lt": write.version}},
        {"$set": dict(write.fields)},
        upsert=True,
    )


def apply_writes(db: Database[Document], collection: str, writes: Sequence[Write]) -> None:
    """One unordered bulk write; "already there / already newer" is success.

    A duplicate ``_id`` (11000) is resolved per write, never assumed: an upsert
    that lost the race to create its document (another projector of the same
    read model inserted an older version first) is retried as the same guarded
    update without upsert, which now matches if the stored version is older;
    an insert counts as done only if a document with its ``_id`` is there (a
    clash on another unique index is an error).
    """
    if not writes:
        return
    coll = db[collection]
    try:
        coll.bulk_write([to_operation(w) for w in writes], ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if exc.details.get("writeConcernErrors") or any(
            e.get("code") != DUPLICATE_KEY for e in errors
        ):
            raise
        _settle_duplicates(coll, [writes[e["index"]] for e in errors])


def _settle_duplicates(coll: Collection[Document], clashed: Sequence[Write]) -> None:
    """Finish the writes whose bulk write answered "duplicate key" (see ``apply_writes``)."""
    upserts = [w for w in clashed if isinstance(w, Upsert)]
    if upserts:
        # Without upsert the guarded update cannot clash on _id again: it updates an
        # older document or matches nothing because the stored one is as new or newer.
        coll.bulk_write(
            [
                UpdateOne({"_id": w.key, "version": {"$lt": w.version}}, {"$set": dict(w.fields)})
                for w in upserts
            ],
            ordered=False,
        )
    inserts = [w.document["_id"] for w in clashed if isinstance(w, Insert)]
    if inserts:
        there = {d["_id"] for d in coll.find({"_id": {"$in": inserts}}, {"_id": 1})}
        missing = [i for i in inserts if i not in there]
        if missing:
            raise DuplicateKeyError(
                f"{coll.name}: {missing[0]!r} clashes with another document on a unique index",
                DUPLICATE_KEY,
            )


class ProjectionProcessor:
    """Applies one projection to a round of deliveries."""

    def __init__(
        self,
        projection: Projection,
        db: Database[Document],
        *,
        stopping: threading.Event | None = None,
        max_wait_s: float = 5.0,
    ) -> None:
        self.projection = projection
        self.db = db
        self.stopping = stopping or threading.Event()
        self.max_wait_s = max_wait_s
        self.applied = 0

    def process(self, deliveries: Sequence[Delivery]) -> None:
        events = [d for d in deliveries if isinstance(d.message, EventMessage)]
        recorded = [self._recorded(d) for d in events]
        try:
            self._until_done(lambda: self._write(recorded))
        except PyMongoError as exc:
            if isinstance(exc, ConnectionFailure):
                raise
            # one bad write must not sink the round: apply event by event
            log.warning("%s: batch write failed (%s); isolating", self.projection.name, exc)
            for d, rec in zip(events, recorded, strict=True):
                try:
                    self._until_done(lambda rec=rec: self._write([rec]))
                except PyMongoError as one:
                    d.error = f"{type(one).__name__}: {one}"[:2000]
        for d in deliveries:
            d.done = d.error is None
        self.applied += sum(1 for d in events if d.done)

    @staticmethod
    def _recorded(d: Delivery) -> Recorded:
        assert isinstance(d.message, EventMessage)
        return Recorded(
            stream=keys.stream(d.partition, d.level), entry_id=d.entry_id, event=d.message.event
        )

    def _write(self, recorded: Sequence[Recorded]) -> None:
        apply_writes(self.db, self.projection.collection, self.projection.plan(recorded))
        newest: dict[str, str] = {}
        for r in recorded:
            seen = newest.get(r.stream)
            if seen is None or checkpoints.pad(r.entry_id) > checkpoints.pad(seen):
                newest[r.stream] = r.entry_id
        checkpoints.advance(self.db[CHECKPOINTS], self.projection.name, newest)

    def _until_done(self, attempt: Any) -> None:
        """Retry ``attempt`` while the database is unreachable (stop: give up the round)."""
        policy, n = RetryPolicy(base_ms=100, max_ms=int(self.max_wait_s * 1000)), 0
        while True:
            try:
                attempt()
                return
            except (ConnectionFailure, StoreUnavailable) as exc:
                n += 1
                if self.stopping.is_set():
                    raise
                delay = policy.backoff_ms(n) / 1000
                log.warning(
                    "%s: database unavailable (%s); retrying in %.1fs",
                    self.projection.name,
                    exc,
                    delay,
                )
                self.stopping.wait(delay)


def projector(
    client: RedisClient,
    partitions: int,
    db: Database[Document],
    projection: Projection,
    *,
    batch: int = 2000,
    claim_idle_ms: int = 30_000,
    block_ms: int = 500,
    reclaim_every_ms: int = 100,
    forget_idle_ms: int | None = None,
    retry: RetryPolicy | None = None,
) -> Worker:
    """A consumer in ``proj:<name>`` that applies ``projection`` to ``db``; dead
    consumers of the group are removed as a worker's are (``forget_idle_ms``,
    see ``WorkerConfig.forget_after_ms``)."""
    if projection.collection == EVENTS:
        ensure_indexes(db)
    processor = ProjectionProcessor(projection, db)
    worker = Worker(
        client,
        partitions,
        processor=processor,
        config=WorkerConfig(
            group=group_of(projection),
            batch=batch,
            track=False,
            claim_idle_ms=claim_idle_ms,
            block_ms=block_ms,
            reclaim_every_ms=reclaim_every_ms,
            forget_idle_ms=forget_idle_ms,
            retry=retry or RetryPolicy(max_attempts=10, base_ms=200, max_ms=30_000),
        ),
    )
    processor.stopping = worker.stopping  # a stopping projector stops waiting for the database
    return worker


def project_until_idle(
    client: RedisClient,
    partitions: int,
    db: Database[Document],
    projections: Sequence[Projection] | None = None,
    timeout: float = 60.0,
) -> int:
    """Run every projector until nothing is left (tests, demo, ``--burst``)."""
    deadline = time.monotonic() + timeout
    total = 0
    for p in projections or all_projections():
        total += projector(client, partitions, db, p).run_until_idle(
            max(1.0, deadline - time.monotonic())
        )
    return total


__all__ = [
    "ProjectionProcessor",
    "all_projections",
    "apply_writes",
    "group_of",
    "project_until_idle",
    "projector",
]
