"""``ledger replay``: rebuild read models from the log, while the live projectors run.

For each chosen view (``balances``, ``credit_scores``):

1. read the log (``projections.eventlog``: the archive joined with the streams);
2. build the view into a fresh collection ``<name>__replay_<ms>`` with the very
   projection the live projector runs (``plan`` + ``runner.apply_writes``), so
   the result is what projecting the log produces, document for document; the
   live collection's secondary indexes are created on it first;
3. swap it in: ``renameCollection <db>.<tmp> -> <db>.<name>`` with
   ``dropTarget: true``. MongoDB runs the rename as one catalog operation, and
   the Mongo-wire server used here performs it under its storage lock, so a
   reader sees either the old collection or the new one, never a mixture;
4. catch up: events that reached the log while the view was being rebuilt may
   have been applied by a live projector to the old collection (now gone).
   Everything appended before the swap is in the log when the catch-up reads
   its tail (``log.read_tail``), and every write is version-guarded, so applying
   the tail again is harmless; whatever a live projector applies after the swap
   lands in the new collection.

``into=<other database>`` builds the views there instead (swapped over that
database's collections, no catch-up: a snapshot of the log as read).

The archive (``events``) is never dropped: it may hold events already trimmed
from the streams. Replaying it inserts the events it lacks (from the streams);
with ``into`` it is built in full, from the whole log, in the other database.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from pymongo.collection import Collection
from pymongo.database import Database

from streams.connection import RedisClient

from .archive import Archive
from .balances import Balances
from .eventlog import LoggedEvent, read_sources, read_tail
from .projection import Insert, Projection, Write
from .runner import apply_writes
from .scores import CreditScores
from .store import BALANCES, CREDIT_SCORES, EVENTS, Document

VIEWS: dict[str, Callable[[], Projection]] = {BALANCES: Balances, CREDIT_SCORES: CreditScores}
ALL: tuple[str, ...] = (BALANCES, CREDIT_SCORES, EVENTS)
BATCH = 1000
"""Accounts (views) or documents (archive) per bulk write."""

Observer = Callable[[str], None]
"""Told each phase as it starts: "read", "rebuild", "swap", "catch-up", "archive", "done"."""
Progress = Callable[[str, int, int | None], None]
"""Told ``(label, done, total or None)`` as work advances (the CLI draws it)."""


@dataclass(slots=True, kw_only=True)
class ReplayResult:
    events: int
    """Events in the log (every copy merged: each event counts once)."""
    accounts: int
    seconds: float
    database: str
    swapped: list[str] = field(default_factory=list)
    """Views rebuilt and swapped in (or built in ``database`` with ``into``)."""
    caught_up: int = 0
    """Accounts written again after the swap because events arrived meanwhile."""
    archived: int = 0
    """Events inserted into the archive."""
    gaps: list[str] = field(default_factory=list)
    """Accounts whose versions are not 1, 2, 3 …: run ``ledger audit``."""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"replayed {self.events} events of {self.accounts} accounts in "
            f"{self.seconds:.2f} s ({self.rate:,.0f} events/s)"
        )


def replay(
    client: RedisClient,
    partitions: int,
    db: Database[Document],
    *,
    only: Iterable[str] = ALL,
    into: Database[Document] | None = None,
    batch: int = BATCH,
    progress: Progress | None = None,
    observer: Observer | None = None,
) -> ReplayResult:
    """Rebuild the chosen read models of ``db`` from the log (see the module doc)."""
    chosen = list(dict.fromkeys(only))
    unknown = [n for n in chosen if n not in ALL]
    if unknown:
        raise ValueError(f"unknown read model(s): {', '.join(unknown)} (known: {', '.join(ALL)})")
    if batch < 1:
        raise ValueError("batch must be at least 1")
    show: Progress = progress or (lambda label, done, total: None)
    tell = observer or (lambda phase: None)
    target = into if into is not None else db
    live = target.name == db.name and target.client is db.client
    started = time.monotonic()

    tell("read")
    sources = read_sources(
        client, partitions, db, progress=lambda n: show("replay: reading the log", n, None)
    )
    log = sources.log()
    latest = [events[-1] for events in log.values()]
    n_events = sum(len(events) for events in log.values())
    result = ReplayResult(
        events=n_events,
        accounts=len(log),
        seconds=0.0,
        database=target.name,
        gaps=[
            u
            for u, events in log.items()
            if [e.event.version for e in events] != list(range(1, len(events) + 1))
        ],
    )

    views = [n for n in chosen if n in VIEWS]
    for name in views:
        tell("rebuild")
        projection = VIEWS[name]()
        with _swapped_in(target, name, db[name], before=lambda: tell("swap")) as tmp:
            for start in range(0, len(latest), batch):
                chunk = latest[start : start + batch]
                apply_writes(target, tmp, projection.plan([e.recorded() for e in chunk]))
                show(f"replay: {name}", start + len(chunk), len(latest))
        result.swapped.append(name)

    if views and live:
        tell("catch-up")
        tail = read_tail(client, partitions, db, sources)
        newer = [
            events[-1]
            for user, events in tail.items()
            if user not in log or events[-1].event.version > log[user][-1].event.version
        ]
        for name in views:
            projection = VIEWS[name]()
            for start in range(0, len(newer), batch):
                chunk = newer[start : start + batch]
                apply_writes(db, name, projection.plan([e.recorded() for e in chunk]))
        result.caught_up = len(newer)

    if EVENTS in chosen:
        tell("archive")
        every = [e for events in log.values() for e in events]
        if live:
            result.archived = _insert(
                db, EVENTS, [e for e in every if e.archived is None], batch, show
            )
        else:
            with _swapped_in(target, EVENTS, db[EVENTS]) as tmp:
                result.archived = _insert(target, tmp, every, batch, show)
    tell("done")
    result.seconds = time.monotonic() - started
    return result


def _insert(
    db: Database[Document],
    collection: str,
    events: Sequence[LoggedEvent],
    batch: int,
    show: Progress,
) -> int:
    """Archive documents for ``events`` (a duplicate ``_id`` means: already there)."""
    plan = Archive()
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        writes: Sequence[Write] = plan.plan([e.recorded() for e in chunk])
        assert all(isinstance(w, Insert) for w in writes)
        apply_writes(db, collection, writes)
        show(f"replay: {collection}", start + len(chunk), len(events))
    return len(events)


@contextmanager
def _swapped_in(
    db: Database[Document],
    name: str,
    model: Collection[Document],
    *,
    before: Callable[[], None] = lambda: None,
) -> Iterator[str]:
    """A fresh collection (named for the block to build in) that replaces ``name``
    in one rename when the block ends (``before`` is called just ahead of it);
    dropped instead if anything fails, so a half-built view is never swapped in."""
    tmp = f"{name}__replay_{time.time_ns() // 1_000_000}"
    try:
        _create_like(db, tmp, model)
        yield tmp
        before()
        db[tmp].rename(name, dropTarget=True)
    except BaseException:
        db.drop_collection(tmp)
        raise


def _create_like(db: Database[Document], name: str, model: Collection[Document]) -> None:
    """Create ``name`` with ``model``'s secondary indexes (a rename replaces the target's)."""
    db.drop_collection(name)
    db.create_collection(name)
    for index, info in model.index_information().items():
        if index == "_id_":
            continue
        options = {k: v for k, v in info.items() if k not in ("key", "v", "ns")}
        db[name].create_index(list(info["key"]), name=index, **options)


__all__ = ["ALL", "VIEWS", "Progress", "ReplayResult", "replay"]
