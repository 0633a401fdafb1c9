"""The storm's moving parts: the Redis it runs on (one redis-server or a Redis
Cluster, each with the crash the chaos gives it) and the fleet of real
``python -m api …`` processes that the chaos loop SIGKILLs and restarts.

(The module's name predates Redis Cluster support; ``Fleet`` is the set of
ledger processes, ``ClusterRedis`` the Redis Cluster.)"""

from __future__ import annotations

import json
import random
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

from redis.crc import key_slot

from api.dev.cluster import RedisClusterNodes
from api.dev.deployment import Deployment
from api.dev.embedded import EmbeddedRedis
from streams import keys
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parents[2]

WORKER = [
    "worker",
    "--import",
    "tests.faults.handlers",
    "--concurrency",
    "2",
    "--claim-idle-ms",
    "3000",
    "--max-attempts",
    "6",
    "--backoff-ms",
    "50",
]
PROJECTOR = ["project", "--batch", "300", "--claim-idle-ms", "1000"]
SCHEDULER = ["scheduler"]


class Fleet(Deployment):
    """Named ledger processes of one deployment; each can be killed and started again."""

    def __init__(self, logs: Path, env: dict[str, str], api_port: int) -> None:
        super().__init__(env=env, log_dir=logs, cwd=ROOT, log_level="WARNING")
        self.api_port = api_port
        self.commands: dict[str, list[str]] = {
            "worker-0": WORKER,
            "worker-1": WORKER,
            "projector": PROJECTOR,
            "scheduler": SCHEDULER,
            "api": ["serve", "--port", str(api_port), "--rate-per-s", "0"],
        }

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start_all(self) -> None:
        for name in self.commands:
            self.start(name, *self.commands[name])

    def stop_all(self) -> None:
        """SIGKILL every process (the storm ends as it ran), then close the logs;
        ``kills`` keeps counting the chaos's kills only."""
        chaos = Counter(self.kills)
        for name in list(self.procs):
            self.kill(name)
        self.kills = chaos
        self.close()

    def serving(self, timeout: float = 2) -> bool:
        """Whether the API answers ``/health`` now."""
        try:
            with urllib.request.urlopen(self.api_url + "/health", timeout=timeout) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def wait_api(self, timeout: float = 30) -> None:
        eventually(
            self.serving,
            timeout=timeout,
            interval=0.1,
            message=f"the API did not answer on {self.api_url}",
        )


class StormRedis(Protocol):
    """The Redis a storm runs on, and the crash the chaos loop gives it."""

    kind: str
    partitions: int
    wait_replicas: int
    """What every appender runs with (``LEDGER_WAIT_REPLICAS``)."""
    kills: int
    notes: list[str]
    """One line per crash: what went down, for how long."""
    outages: list[tuple[float, float]]
    """(from, to) wall-clock seconds of each crash: until Redis took every write again."""

    @property
    def url(self) -> str: ...

    def crash(self, rng: random.Random) -> None:
        """SIGKILL (part of) Redis now; it comes back in ``crash`` or a later ``heal``."""

    def heal(self, *, now: bool = False) -> bool:
        """Bring back what ``crash`` left down, once it is due (``now``: at once);
        True if it did."""


class SingleRedis:
    """One redis-server (AOF, appendfsync always): a crash is kill -9, a pause, a
    start on the same port and AOF."""

    kind = "single"
    wait_replicas = 0

    def __init__(self, server: EmbeddedRedis, partitions: int) -> None:
        self.server = server
        self.partitions = partitions
        self.kills = 0
        self.notes: list[str] = []
        self.outages: list[tuple[float, float]] = []

    @property
    def url(self) -> str:
        return self.server.url

    def crash(self, rng: random.Random) -> None:
        self.server.kill()  # SIGKILL: what a machine crash does to the data
        down, since = time.monotonic(), time.time()
        print(f"\nredis-server killed at {time.time() * 1000:.0f}")
        self.kills += 1
        time.sleep(rng.uniform(0.3, 1.0))  # Redis stays down a while
        self.server.start()  # same port, same AOF
        self.outages.append((since, time.time()))
        self.notes.append(f"redis-server down {time.monotonic() - down:.1f}s")

    def heal(self, *, now: bool = False) -> bool:
        """Nothing is left down: ``crash`` started the server again."""
        return False


class ClusterRedis:
    """A Redis Cluster (masters with one replica each, AOF appendfsync always): a
    crash SIGKILLs one master and waits until its replica took over; the killed
    node starts again a few seconds later and rejoins as a replica. Appends wait
    for one replica (``wait_replicas``), so the failover loses no acknowledged one;
    until the killed node is back in sync, the partitions of its successor (a
    master without a replica) refuse appends (503: retried)."""

    kind = "cluster"
    wait_replicas = 1

    def __init__(self, nodes: RedisClusterNodes, partitions: int) -> None:
        self.nodes = nodes
        self.partitions = partitions
        self.kills = 0
        self.notes: list[str] = []
        self.failovers_s: list[float] = []
        self.outages: list[tuple[float, float]] = []
        self._down: tuple[int, float, float, float] | None = None
        """(port, when it went down, when to start it again, wall clock when it
        went down) of the killed master."""

    @property
    def url(self) -> str:
        return self.nodes.url

    def partitions_by_master(self) -> dict[int, list[int]]:
        """{master port: partitions whose streams it holds}, every master listed."""
        out: dict[int, list[int]] = {port: [] for port in self.nodes.masters_now()}
        for p in keys.partitions(self.partitions):
            owners = {
                self.nodes.owner(key_slot(keys.stream(p, lv).encode())) for lv in keys.LEVELS_DESC
            }
            for port in owners:
                out.setdefault(port, []).append(int(p))
        return out

    def crash(self, rng: random.Random) -> None:
        self.heal(now=True)  # one node down at a time: the next crash needs its replica
        port = rng.choice(sorted(self.nodes.masters_now()))
        down, since = time.monotonic(), time.time()
        print(f"\nmaster on {port} killed at {since * 1000:.0f}")
        promoted = self.nodes.fail_master(port)
        took = time.monotonic() - down
        self.failovers_s.append(took)
        self.kills += 1
        print(f"its replica on {promoted} took over in {took:.1f}s")
        self._down = (port, down, time.monotonic() + rng.uniform(1.0, 3.0), since)

    def heal(self, *, now: bool = False) -> bool:
        if self._down is None:
            return False
        port, down, due, since = self._down
        if not now and time.monotonic() < due:
            return False
        begun = time.monotonic()
        self.nodes.restart(port)  # rejoins as a replica; returns once it is in sync
        self._down = None
        self.outages.append((since, time.time()))
        self.notes.append(
            f"master on {port} down {begun - down:.1f}s (failover "
            f"{self.failovers_s[-1]:.1f}s), back as a replica in {time.monotonic() - begun:.1f}s"
        )
        return True


def read_records(paths: list[Path]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in paths:
        if path.exists():
            out.extend(json.loads(line) for line in path.read_text().splitlines() if line)
    return out
