"""A real Redis Cluster on loopback, for the cluster tests and benchmarks.

Each node is an ``EmbeddedRedis`` (a child that dies with its parent) started
with ``--cluster-enabled yes``; the slots are split in equal ranges with
``CLUSTER ADDSLOTS``, the nodes meet with ``CLUSTER MEET`` and each replica
follows its master with ``CLUSTER REPLICATE`` (what ``redis-cli --cluster
create`` does, without needing redis-cli). ``stop()`` stops every node.

    with RedisClusterNodes(tmp, masters=3, replicas=1) as cluster:
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
    """``masters`` redis-servers forming one cluster, each with ``replicas``
    replicas. ``nodes`` lists the masters first, then the replicas (replica
    ``r`` of master ``m`` is ``nodes[masters + m * replicas + r]``); after a
    failover their roles change, ``masters_now()`` tells the current ones."""

    def __init__(
        self,
        data_dir: Path,
        masters: int = 3,
        replicas: int = 0,
        *,
        node_timeout_ms: int = 5000,
        appendonly: bool = False,
        appendfsync: str = "everysec",
    ) -> None:
        """``appendonly``/``appendfsync`` go to every node's ``EmbeddedRedis``
        (``appendfsync="always"``: a SIGKILLed node loses no write it answered)."""
        self.data_dir = Path(data_dir)
        self.nodes: list[EmbeddedRedis] = []
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.appendonly = appendonly
        self.appendfsync = appendfsync

    @property
    def url(self) -> str:
        return f"{CLUSTER_SCHEME}{LOOPBACK}:{self.running()[0].port}"

    def client(self, port: int) -> redis_py.Redis:
        """A plain (non-cluster) client on the node listening on ``port``."""
        return redis_py.Redis(host=LOOPBACK, port=port, socket_timeout=10)

    def node_ids(self) -> dict[int, str]:
        """{port: cluster node id} of every node."""
        ids = {}
        for node in self.running():
            with self.client(node.port) as c:
                ids[node.port] = c.execute_command("CLUSTER", "MYID").decode()
        return ids

    def owner(self, slot: int) -> int:
        """The port of the master that owns ``slot`` (as the first node sees it)."""
        with self.client(self.running()[0].port) as c:
            for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise EmbeddedError(f"slot {slot} is not covered")

    def start(self) -> None:
        try:
            for i in range(self.masters * (1 + self.replicas)):
                node_dir = self.data_dir / f"node-{i}"
                node = EmbeddedRedis(
                    node_dir,
                    port=_bus_free_port(),
                    appendonly=self.appendonly,
                    appendfsync=self.appendfsync,
                    extra_args=[
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout", str(self.node_timeout_ms),
                        "--repl-diskless-sync-delay", "0",  # a replica syncs at once
                    ],
                )  # fmt: skip
                self.nodes.append(node)
                node.start()
            self._form()
        except BaseException:
            self.stop()
            raise

    def master_of(self, index: int) -> int:
        """The index in ``nodes`` of the master node ``index`` was formed to follow."""
        return index if index < self.masters else (index - self.masters) // self.replicas

    def _form(self) -> None:
        share = SLOTS // self.masters
        for i, node in enumerate(self.nodes[: self.masters]):
            first = i * share
            last = SLOTS - 1 if i == self.masters - 1 else first + share - 1
            with self.client(node.port) as c:
                c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                c.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
        with self.client(self.nodes[0].port) as c:
            for node in self.nodes[1:]:
                c.execute_command("CLUSTER", "MEET", LOOPBACK, node.port)
        ids = self._ids_when_known()
        for i, node in enumerate(self.nodes[self.masters :], start=self.masters):
            with self.client(node.port) as c:
                c.execute_command("CLUSTER", "REPLICATE", ids[self.nodes[self.master_of(i)].port])
        self.wait_ready()

    def _ids_when_known(self) -> dict[int, str]:
        """{port: node id}, once every node knows every other (REPLICATE needs it)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            ids = self.node_ids()
            known = all(self._known(node.port) == len(self.nodes) for node in self.nodes)
            if known:
                return ids
            if time.monotonic() > deadline:
                raise EmbeddedError(f"the nodes did not meet within {READY_TIMEOUT_S:g}s")
            time.sleep(0.05)

    def _known(self, port: int) -> int:
        with self.client(port) as c:
            return len(c.execute_command("CLUSTER", "NODES").decode().strip().splitlines())

    def running(self) -> list[EmbeddedRedis]:
        """The nodes whose process runs (a killed master is not among them)."""
        return [node for node in self.nodes if node.pid is not None]

    def wait_ready(self) -> None:
        """Until every running node says cluster_state:ok, sees every running
        node connected, and every running replica's link to its master is up."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if all(self._ready(node.port) for node in self.running()):
                return
            if time.monotonic() > deadline:
                raise EmbeddedError(f"the cluster did not form within {READY_TIMEOUT_S:g}s")
            time.sleep(0.05)

    def _ready(self, port: int) -> bool:
        live = {node.port for node in self.running()}
        with self.client(port) as c:
            info = c.execute_command("CLUSTER", "INFO").decode()
            nodes = c.execute_command("CLUSTER", "NODES").decode().strip().splitlines()
            replication = c.info("replication")
        seen = {int(line.split()[1].split("@")[0].rsplit(":", 1)[1]): line for line in nodes}
        return (
            "cluster_state:ok" in info
            and live <= set(seen)
            and all(" connected" in seen[p] and "fail" not in seen[p].split()[2] for p in live)
            and (replication["role"] == "master" or replication.get("master_link_status") == "up")
        )

    def masters_now(self) -> list[int]:
        """Ports of the running nodes that are masters now."""
        ports = []
        for node in self.running():
            with self.client(node.port) as c:
                if c.info("replication")["role"] == "master":
                    ports.append(node.port)
        return ports

    def replica_of(self, master_port: int) -> list[int]:
        """Ports of the running replicas that follow the master on ``master_port``."""
        ports = []
        for node in self.running():
            with self.client(node.port) as c:
                info = c.info("replication")
            if info["role"] == "slave" and int(info["master_port"]) == master_port:
                ports.append(node.port)
        return ports

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``, as a crash would."""
        self._node(port).kill()

    def restart(self, port: int) -> None:
        """Start a killed node again on its port and data directory; it rejoins
        (a failed-over master comes back as a replica of its successor)."""
        self._node(port).start()
        self.wait_ready()

    def fail_master(self, port: int) -> int:
        """SIGKILL the master on ``port``; wait until one of its replicas has
        taken over and the cluster is ok again; return that replica's port."""
        candidates = self.replica_of(port)
        if not candidates:
            raise EmbeddedError(f"the master on {port} has no replica to take over")
        self.kill(port)
        deadline = time.monotonic() + READY_TIMEOUT_S + 4 * self.node_timeout_ms / 1000
        while True:
            promoted = [p for p in candidates if p in self.masters_now()]
            if promoted and all(self._ready(n.port) for n in self.running()):
                return promoted[0]
            if time.monotonic() > deadline:
                raise EmbeddedError(f"no replica of the master on {port} took over in time")
            time.sleep(0.1)

    def _node(self, port: int) -> EmbeddedRedis:
        return next(node for node in self.nodes if node.port == port)

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
        ports = [to_port] + [n.port for n in self.running() if n.port != to_port]
        for port in ports:  # the new owner first, as redis-cli does
            with self.client(port) as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[to_port])
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(self._owner_seen(n.port, slot) == to_port for n in self.running()):
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
        while not all(self._owner_seen(n.port, slot) == want for n in self.running()):
            if time.monotonic() > deadline:
                raise EmbeddedError(f"the node on {port} is not seen on {want}")
            time.sleep(0.05)

    def flushall(self) -> None:
        for port in self.masters_now():
            with self.client(port) as c:
                c.flushall()
                if self.replicas:
                    c.wait(self.replicas, 5000)
        self.reset_stats()

    def reset_stats(self) -> None:
        for node in self.running():
            with self.client(node.port) as c:
                c.config_resetstat()

    def evalsha_calls(self) -> dict[int, int]:
        """{port: EVALSHA calls since the last reset_stats()} of every node."""
        calls = {}
        for node in self.running():
            with self.client(node.port) as c:
                stats = c.info("commandstats").get("cmdstat_evalsha", {})
                calls[node.port] = int(stats.get("calls", 0))
        return calls

    def evalsha_clients(self) -> dict[int, int]:
        """{port: connections whose last command was EVALSHA} of every node."""
        counts = {}
        for node in self.running():
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
