"""Fixtures and helpers for the log, replay, audit and statement tests.

Everything runs against the session's real redis-server and Mongo-wire server;
tests append through a ``QueueManager``, project with the real projectors and
tamper with Redis and MongoDB the way an operator (or an attacker) could.
"""

from __future__ import annotations

import argparse
import contextlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymongo.database import Database

from api.cli.audit import add_parsers, run
from api.settings import Settings
from ledger.errors import InsufficientCredits
from ledger.tasks import Priority
from projections.runner import project_until_idle
from streams import HandlerRegistry, QueueManager, StreamsConfig, keys
from streams.connection import RedisClient, connect
from streams.replies import Fields
from streams.replies import entries as stream_entries
from tests.streamlog import xadd_fields

PARTITIONS = 4


@pytest.fixture
def qm(redis: RedisClient, redis_url: str) -> Iterator[QueueManager]:
    """A QueueManager with a handler registry of its own, on a flushed Redis."""
    manager = QueueManager(
        config=StreamsConfig(redis_url=redis_url, partitions=PARTITIONS),
        client=connect(redis_url),
        registry=HandlerRegistry(),
    )
    try:
        yield manager
    finally:
        manager.close()


def traffic(
    qm: QueueManager, users: int = 4, events: int = 40, seed: int = 7, prefix: str = "u"
) -> list[str]:
    """Register ``users`` accounts and append about ``events`` credit events across every
    priority level (so one account's events sit in several streams)."""
    rng = random.Random(seed)
    names = [f"{prefix}{i}" for i in range(users)]
    for name in names:
        qm.register_user(name, f"{name}@example.com", priority=rng.choice(list(Priority)))
    for i in range(events):
        name = rng.choice(names)
        prio = rng.choice(list(Priority))
        roll = rng.random()
        with contextlib.suppress(InsufficientCredits):
            if roll < 0.45:
                qm.purchase(
                    name,
                    rng.randint(1, 500),
                    f"{prefix}-t{seed}-{i}",
                    currency=rng.choice(["USD", "EUR"]),
                    priority=prio,
                )
            elif roll < 0.85:
                qm.use(name, rng.randint(1, 200), reason=f"job {i}", priority=prio)
            else:
                qm.adjust(
                    name, rng.choice([-1, 1]) * rng.randint(1, 50), reason="fix", priority=prio
                )
    return names


def project(qm: QueueManager, db: Database[Any]) -> int:
    return project_until_idle(qm.redis, PARTITIONS, db)


def all_streams() -> list[str]:
    return [keys.stream(p, lv) for p in keys.partitions(PARTITIONS) for lv in keys.LEVELS_DESC]


def collection(db: Database[Any], name: str) -> list[dict[str, Any]]:
    """A whole collection, in ``_id`` order."""
    return sorted((dict(d) for d in db[name].find()), key=lambda d: str(d["_id"]))


def entries_of(r: RedisClient, user: str) -> list[tuple[str, str, Fields]]:
    """(stream, entry id, fields) of ``user``'s events, in version order."""
    p = keys.partition_of(user, PARTITIONS)
    found: list[tuple[str, str, Fields]] = []
    for lv in keys.LEVELS_DESC:
        stream = keys.stream(p, lv)
        for eid, fields in stream_entries(r, stream):
            if fields.get(b"u") == user.encode() and fields.get(b"k") != b"task":
                found.append((stream, eid.decode(), fields))
    return sorted(found, key=lambda e: int(e[2][b"v"]))


def not_first(r: RedisClient, user: str) -> tuple[str, str, Fields]:
    """One of ``user``'s entries that is neither the first of its stream nor the
    account's last event (so deleting it leaves a hole, not a trimmed-looking head)."""
    events = entries_of(r, user)
    for stream, eid, fields in events[1:-1]:
        if stream_entries(r, stream, count=1)[0][0].decode() != eid:
            return stream, eid, fields
    raise AssertionError(f"no middle entry for {user}: make more traffic")


def rewrite_stream(
    r: RedisClient, stream: str, change: Callable[[str, Fields], Fields | None]
) -> None:
    """Rewrite a whole stream in place, as someone with write access to Redis could:
    DEL it and XADD every entry again under its original id (``change`` may alter or
    drop one), then recreate its consumer groups where they were."""
    entries = stream_entries(r, stream)
    groups = r.xinfo_groups(stream)
    r.delete(stream)
    for raw_id, fields in entries:
        eid = raw_id.decode()
        new = change(eid, dict(fields))
        if new is not None:
            r.xadd(stream, xadd_fields(new), id=eid)
    for g in groups:
        r.xgroup_create(stream, g["name"], id=g["last-delivered-id"], mkstream=True)


def trim_half(r: RedisClient) -> int:
    """Exactly trim the older half of every stream (XTRIM MINID, not approximate)."""
    removed = 0
    for stream in all_streams():
        ids = [eid for eid, _ in stream_entries(r, stream)]
        if len(ids) >= 2:
            removed += r.xtrim(stream, minid=ids[len(ids) // 2].decode(), approximate=False)
    return removed


def _common(p: argparse.ArgumentParser) -> None:
    """Like ``api.cli.main._common``: connection options on every subcommand."""
    p.add_argument("--redis-url", default=None)
    p.add_argument("--mongo-url", default=None)
    p.add_argument("--mongo-db", default="ledger")
    p.add_argument("--partitions", type=int, default=PARTITIONS)
    p.add_argument("--log-level", default="INFO")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ledger")
    sub = p.add_subparsers(dest="command", required=True)
    add_parsers(sub, _common)
    return p


Cli = Callable[..., int]


@pytest.fixture
def cli(redis_url: str, mongo_url: str, mongo_db: Database[Any]) -> Cli:
    """``cli("audit", "--json")`` runs a command against the test servers and database."""

    def call(*argv: str) -> int:
        conn = ["--redis-url", redis_url, "--mongo-url", mongo_url, "--mongo-db", mongo_db.name]
        args = list(argv)
        # the connection options go right after the subcommand (`audit export` included)
        at = 2 if args[:2] == ["audit", "export"] else 1
        args[at:at] = conn
        ns = parser().parse_args(args)
        settings = Settings(
            redis_url=ns.redis_url,
            mongo_url=ns.mongo_url,
            mongo_db=ns.mongo_db,
            partitions=ns.partitions,
        )
        return run(ns, settings)

    return call
