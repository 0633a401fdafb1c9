"""The figures read from XINFO, XPENDING and XLEN add up over every master; dead
consumers leave their groups on every master.

Queue stats (``QueueManager.get_queue_stats``, ``/api/queue/stats``), the
dashboard's overview, ``/api/projections`` and the ``/metrics`` gauges are
compared with sums computed directly on each master with a plain client (the
streams that master holds, found by SCAN on it): a figure read from one node
only, or a keyless command sent to the default node, would miss the others.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from pymongo.database import Database
from starlette.testclient import TestClient

from api.dev.cluster import RedisClusterNodes
from api.http import metrics
from api.http.app import create_app
from api.settings import Settings
from ledger.tasks import Priority
from streams import HandlerRegistry, QueueManager, StreamsConfig, keys
from streams.connection import ensure_groups

pytestmark = pytest.mark.cluster

PARTITIONS = 8
PROJECTIONS = {"balances": "proj:balances", "credit_scores": "proj:credit_scores"}
PROJECTIONS["events"] = "proj:events"
PARTS = keys.partitions(PARTITIONS)


@dataclass
class Figures:
    """Sums over the masters: by level name, and by group then level name."""

    length: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    pending: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    lag: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    consumers: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    dead: int = 0
    by_node: list[tuple[int, int]] = field(default_factory=list)
    """Per master: (XLEN of its streams, most consumers of the workers group on one)."""

    def group_total(self, kind: str, group: str) -> int:
        """A group's pending or lag over every level; a level where the group is
        missing counts its whole length as lag (nothing was delivered)."""
        values: dict[str, int] = getattr(self, kind)[group]
        if kind == "lag":
            return sum(values.get(lv, self.length[lv]) for lv in self.length)
        return sum(values.values())


def on_each_master(nodes: RedisClusterNodes) -> Figures:
    """XLEN, XINFO GROUPS and the XPENDING summary of every stream, master by master."""
    levels = {keys.stream(p, lv): keys.LEVEL_NAMES[lv] for p in PARTS for lv in Priority}
    dead = {keys.dead(p) for p in PARTS}
    out = Figures()
    for port in nodes.masters_now():
        with nodes.client(port) as c:
            held = [k.decode() for k in c.scan_iter(match="ledger:*", count=1000)]
            mine = [k for k in held if k in levels or k in dead]
            length, most = 0, 0
            for key in mine:
                if key in dead:
                    out.dead += int(c.xlen(key))
                    continue
                level = levels[key]
                out.length[level] += int(c.xlen(key))
                length += int(c.xlen(key))
                for g in c.xinfo_groups(key):
                    group = g["name"].decode()
                    summary = c.xpending(key, group)
                    assert summary["pending"] == g["pending"], (key, group)
                    out.pending[group][level] = out.pending[group].get(level, 0) + g["pending"]
                    out.lag[group][level] = out.lag[group].get(level, 0) + g["lag"]
                    n = g["consumers"]
                    out.consumers[group][level] = max(out.consumers[group].get(level, 0), n)
                    if group == "workers":
                        most = max(most, n)
            out.by_node.append((length, most))
    return out


def gauge(text: str, name: str, **labels: str) -> float:
    pairs = ",".join(f'{k}="{v}"' for k, v in labels.items())
    series = f"{name}{{{pairs}}}" if pairs else name
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert found is not None, f"no {series} in /metrics"
    return float(found.group(1))


@pytest.fixture
def qm(redis_cluster: str) -> Iterator[QueueManager]:
    manager = QueueManager(
        config=StreamsConfig(redis_url=redis_cluster, partitions=PARTITIONS),
        registry=HandlerRegistry(),
    )
    try:
        yield manager
    finally:
        manager.close()


def traffic(qm: QueueManager) -> None:
    """Entries on every level of every partition; the workers group with entries
    pending to several consumers (a different number per partition) and some
    undelivered; one projection group part-read, two not created; dead letters."""
    users = [f"fig-{i}" for i in range(24)]
    for i, user in enumerate(users):
        qm.register_user(user, f"{user}@example.com", priority=list(Priority)[i % 4])
        qm.purchase(user, 10 + i, f"fig-t{i}", priority=list(Priority)[(i + 1) % 4])
    for queue, n in (("default", 30), ("high_priority", 20), ("low_priority", 12)):
        qm.enqueue_many(queue, "noop", [{"i": i} for i in range(n)])
    first = qm.worker(batch=2 * PARTITIONS)  # creates the group: 2 per partition a read
    first.consumer = "fig-a"
    assert first._read()
    r = qm.redis
    for p in PARTS:  # more consumers on some partitions than on others
        for i in range(p % 4):
            r.xreadgroup("workers", f"fig-{i}", {keys.stream(p, Priority.NORMAL): ">"}, count=1)
        done = cast(list[Any], r.xrange(keys.stream(p, Priority.HIGH), count=1))
        if done and p % 2:
            r.xack(keys.stream(p, Priority.HIGH), "workers", done[0][0])
    ensure_groups(r, PARTITIONS, PROJECTIONS["balances"])
    for p in PARTS[::3]:
        for lv in Priority:
            r.xreadgroup(PROJECTIONS["balances"], "fig-proj", {keys.stream(p, lv): ">"}, count=2)
    for p in PARTS:
        for i in range(p):
            r.xadd(keys.dead(p), {"_stream": keys.stream(p, Priority.LOW), "error": f"e{i}"})


def test_xinfo_figures_add_up_over_every_master(
    qm: QueueManager,
    redis_cluster: str,
    redis_cluster_nodes: RedisClusterNodes,
    mongo_url: str,
    mongo_db: Database[Any],
) -> None:
    traffic(qm)
    want = on_each_master(redis_cluster_nodes)
    workers = "workers"
    # one node's figures would not do: each master holds a share, consumers differ
    assert all(length for length, _ in want.by_node), want.by_node
    assert len({most for _, most in want.by_node}) > 1, want.by_node
    assert want.pending[workers] and want.dead == sum(range(PARTITIONS))

    stats = qm.get_queue_stats()
    for spec in qm.config.queues:
        level = keys.LEVEL_NAMES[spec.priority]
        s = stats[spec.name]
        assert (s["length"], s["pending"], s["lag"], s["consumers"]) == (
            want.length[level],
            want.pending[workers][level],
            want.lag[workers][level],
            want.consumers[workers][level],
        ), spec.name

    settings = Settings(
        redis_url=redis_cluster, mongo_url=mongo_url, mongo_db=mongo_db.name, partitions=PARTITIONS
    )
    with TestClient(metrics.instrument(create_app(settings))) as client:
        assert client.get("/api/queue/stats").json() == stats
        overview = client.get("/api/ops/overview").json()
        projections = {p["projection"]: p for p in client.get("/api/projections").json()}
        text = client.get("/metrics").text

    assert overview["dead_letters"]["count"] == want.dead
    assert gauge(text, "ledger_dead_letters") == want.dead
    for spec in qm.config.queues:
        level = keys.LEVEL_NAMES[spec.priority]
        shown = overview["queues"][spec.name]
        assert (shown["length"], shown["pending"], shown["lag"], shown["consumers"]) == (
            want.length[level],
            want.pending[workers][level],
            want.lag[workers][level],
            want.consumers[workers][level],
        ), spec.name
        for figure, expected in (
            ("length", want.length[level]),
            ("pending", want.pending[workers][level]),
            ("lag", want.lag[workers][level]),
            ("consumers", want.consumers[workers][level]),
        ):
            assert gauge(text, f"ledger_queue_{figure}", queue=spec.name) == expected, figure
    for level in keys.LEVEL_NAMES.values():
        labels = {"group": workers, "level": level}
        assert gauge(text, "ledger_group_pending", **labels) == want.pending[workers][level]
        assert gauge(text, "ledger_group_lag", **labels) == want.lag[workers][level]
    for name, group in PROJECTIONS.items():
        owed = (want.group_total("pending", group), want.group_total("lag", group))
        assert (projections[name]["pending"], projections[name]["lag"]) == owed, name
        shown = next(p for p in overview["projections"] if p["projection"] == name)
        assert (shown["pending"], shown["lag"]) == owed, name
        assert (
            gauge(text, "ledger_projection_pending", projection=name),
            gauge(text, "ledger_projection_lag", projection=name),
        ) == owed, name
    assert want.group_total("pending", PROJECTIONS["balances"]) > 0


def test_dead_consumers_leave_their_groups_on_every_master(qm: QueueManager) -> None:
    """``lua/forget.lua`` runs once per partition, each call on the master of its slot."""
    qm.enqueue_many("default", "noop", [{"i": i} for i in range(16 * PARTITIONS)])
    worker = qm.worker(forget_idle_ms=200)  # creates the group
    worker.consumer = "live"
    r = qm.redis
    normal = [keys.stream(p, Priority.NORMAL) for p in PARTS]
    for stream in normal:
        read = cast(list[Any], r.xreadgroup("workers", "dead", {stream: ">"}, count=1))
        r.xack(stream, "workers", read[0][1][0][0])
        r.xreadgroup("workers", "holder", {stream: ">"}, count=1)  # never acknowledged
    time.sleep(0.3)
    worker._forget()
    assert worker.forgotten == PARTITIONS
    for stream in normal:
        left = {c["name"]: c["pending"] for c in r.xinfo_consumers(stream, "workers")}
        assert left == {b"holder": 1}, stream
