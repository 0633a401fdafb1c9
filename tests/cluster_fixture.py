"""A real Redis Cluster of three masters on loopback, for tests marked ``cluster``.

Each node is an ``EmbeddedRedis`` (a child that dies with its parent) started
with ``--cluster-enabled yes``; the slots are split in three ranges with
``CLUSTER ADDSLOTS`` and the nodes meet with ``CLUSTER MEET`` (what
``redis-cli --cluster create`` does, without needing redis-cli). ``stop()``
stops every node.

    with RedisClusterNodes(tmp) as cluster:
        cluster.url  # redis+cluster://127.0.0.1:P
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis as redis_py

from api.dev.embedded import LOOPBACK, EmbeddedError, EmbeddedRedis, free_port
from streams.connection import CLUSTER_SCHEME

SLOTS = 16384
BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000
READY_TIMEOUT_S = 20.0


def _bus_free_port() -> int:
    """A free port whose cluster-bus port (+10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + BUS_OFFSET > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port + BUS_OFFSET))
            except OSError:
                continue
        return port
    raise EmbeddedError("no free port pair (port, port + 10000) on loopback")


class RedisClusterNodes:
    """``masters`` redis-servers forming one cluster, no replicas."""

    def __init__(self, data_dir: Path, masters: int = 3) -> None:
        self.data_dir = Path(data_dir)
        self.nodes: list[EmbeddedRedis] = []
        self.masters = masters

    @property
    def url(self) -> str:
        return f"{CLUSTER_SCHEME}{LOOPBACK}:{self.nodes[0].port}"

    def client(self, port: int) -> redis_py.Redis:
        """A plain (non-cluster) client on the node listening on ``port``."""
        return redis_py.Redis(host=LOOPBACK, port=port, socket_timeout=10)

    def node_ids(self) -> dict[int, str]:
        """{port: cluster node id} of every node."""
        ids = {}
        for node in self.nodes:
            with self.client(node.port) as c:
                ids[node.port] = c.execute_command("CLUSTER", "MYID").decode()
        return ids

    def owner(self, slot: int) -> int:
        """The port of the master that owns ``slot`` (as the first node sees it)."""
        with self.client(self.nodes[0].port) as c:
            for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise EmbeddedError(f"slot {slot} is not covered")

    def start(self) -> None:
        try:
            for i in range(self.masters):
                node_dir = self.data_dir / f"node-{i}"
                node = EmbeddedRedis(
                    node_dir,
                    port=_bus_free_port(),
                    appendonly=False,
                    extra_args=[
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout", "5000",
                    ],
                )  # fmt: skip
                self.nodes.append(node)
                node.start()
            self._form()
        except BaseException:
            self.stop()
            raise

    def _form(self) -> None:
        share = SLOTS // self.masters
        for i, node in enumerate(self.nodes):
            first = i * share
            last = SLOTS - 1 if i == self.masters - 1 else first + share - 1
            with self.client(node.port) as c:
                c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                c.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
        with self.client(self.nodes[0].port) as c:
            for node in self.nodes[1:]:
                c.execute_command("CLUSTER", "MEET", LOOPBACK, node.port)
        self.wait_ready()

    def wait_ready(self) -> None:
        """Until every node says cluster_state:ok and knows every node."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if all(self._ready(node.port) for node in self.nodes):
                return
            if time.monotonic() > deadline:
                raise EmbeddedError(f"the cluster did not form within {READY_TIMEOUT_S:g}s")
            time.sleep(0.05)

    def _ready(self, port: int) -> bool:
        with self.client(port) as c:
            info = c.execute_command("CLUSTER", "INFO").decode()
            nodes = c.execute_command("CLUSTER", "NODES").decode().strip().splitlines()
        return (
            "cluster_state:ok" in info
            and len(nodes) == self.masters
            and all(" connected" in line for line in nodes)
        )

    def migrate_slot(self, slot: int, to_port: int, *, finish: bool = True) -> None:
        """Move ``slot`` and its keys to the master on ``to_port`` (as resharding
        does). With ``finish=False`` the keys move but the slot stays MIGRATING
        on its owner and IMPORTING on the target: the owner then answers ASK."""
        from_port = self.owner(slot)
        ids = self.node_ids()
        with self.client(from_port) as source, self.client(to_port) as target:
            target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[from_port])
            source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to_port])
            while keys := source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                source.execute_command("MIGRATE", LOOPBACK, to_port, "", 0, 5000, "KEYS", *keys)
            if not finish:
                return
        self.finish_slot(slot, to_port)

    def finish_slot(self, slot: int, to_port: int) -> None:
        """Assign ``slot`` to the master on ``to_port`` on every node."""
        ids = self.node_ids()
        ports = [to_port] + [n.port for n in self.nodes if n.port != to_port]
        for port in ports:  # the new owner first, as redis-cli does
            with self.client(port) as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[to_port])
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(self._owner_seen(n.port, slot) == to_port for n in self.nodes):
            if time.monotonic() > deadline:
                raise EmbeddedError(f"slot {slot} did not settle on port {to_port}")
            time.sleep(0.05)

    def _owner_seen(self, port: int, slot: int) -> int | None:
        with self.client(port) as c:
            for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        return None

    def announce(self, port: int, announced: int | None) -> None:
        """Make the node on ``port`` tell clients it listens on ``announced``
        (e.g. a proxy's port; None: its own port again), and wait until every
        node says so."""
        with self.client(port) as c:
            c.config_set("cluster-announce-bus-port", port + BUS_OFFSET)
            c.config_set("cluster-announce-port", announced or 0)
        want = announced or port
        node_id = self.node_ids()[port].encode()
        with self.client(port) as c:
            ranges = c.execute_command("CLUSTER", "SLOTS")
        slot = next(start for start, _, master, *_ in ranges if master[2] == node_id)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(self._owner_seen(n.port, slot) == want for n in self.nodes):
            if time.monotonic() > deadline:
                raise EmbeddedError(f"the node on {port} is not seen on {want}")
            time.sleep(0.05)

    def flushall(self) -> None:
        for node in self.nodes:
            with self.client(node.port) as c:
                c.flushall()
        self.reset_stats()

    def reset_stats(self) -> None:
        for node in self.nodes:
            with self.client(node.port) as c:
                c.config_resetstat()

    def evalsha_calls(self) -> dict[int, int]:
        """{port: EVALSHA calls since the last reset_stats()} of every node."""
        calls = {}
        for node in self.nodes:
            with self.client(node.port) as c:
                stats = c.info("commandstats").get("cmdstat_evalsha", {})
                calls[node.port] = int(stats.get("calls", 0))
        return calls

    def evalsha_clients(self) -> dict[int, int]:
        """{port: connections whose last command was EVALSHA} of every node."""
        counts = {}
        for node in self.nodes:
            with self.client(node.port) as c:
                counts[node.port] = sum(1 for x in c.client_list() if x["cmd"] == "evalsha")
        return counts

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
