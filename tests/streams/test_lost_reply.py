"""A reply lost after Redis ran the write: the write is never sent twice.

redis-py resends a command or pipeline after a connection error (a client built
with ``redis.Redis(host=...)`` retries 3 times by default). For
an append without an Idempotency-Key that would record the event twice, so
every script call bypasses that retry; the caller gets ``Unavailable``. A proxy
between client and Redis forwards one request, lets Redis answer, and then
drops the answer and the connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
import redis as redis_py

from ledger.commands import Purchase, RegisterUser, Use
from streams import QueueManager, StreamsConfig, Unavailable, keys

PARTITIONS = 4

pytestmark = pytest.mark.single_redis(
    "the proxy stands in front of one redis-server's port; a Cluster client learns every "
    "master's own address from CLUSTER SLOTS and goes around it (the cluster's lost reply: "
    "tests/cluster/test_scripts_on_cluster.py)"
)


class ReplyDropper:
    """TCP proxy to Redis; while ``armed``, the next reply is swallowed and its
    connection closed (Redis has run the request by then)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.armed = threading.Event()
        self.dropped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _start(self, *args: object) -> None:
        thread = threading.Thread(target=self._pump, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._sockets += [client, server]
            self._start(client, server, False)
            self._start(server, client, True)

    def _pump(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        try:
            while data := src.recv(65536):
                if replies and self.armed.is_set():
                    self.armed.clear()
                    self.dropped.set()
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        """Stop accepting, break every connection and join every thread."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.listener.close()
        self._threads[0].join(5)  # no connection is added after this
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(5)


@pytest.fixture
def proxied(redis: redis_py.Redis, redis_url: str) -> Iterator[tuple[QueueManager, ReplyDropper]]:
    url = urlparse(redis_url)
    proxy = ReplyDropper((url.hostname or "127.0.0.1", url.port or 6379))
    via = f"redis://127.0.0.1:{proxy.port}{url.path}"
    # built the common way, this client comes with redis-py's default retries (3)
    client = redis_py.Redis(host="127.0.0.1", port=proxy.port, db=int(url.path[1:] or 0))
    qm = QueueManager(config=StreamsConfig(redis_url=via, partitions=PARTITIONS), client=client)
    try:
        yield qm, proxy
    finally:
        qm.close()
        proxy.close()


def test_an_append_whose_reply_is_lost_is_recorded_once(
    proxied: tuple[QueueManager, ReplyDropper], redis: redis_py.Redis
) -> None:
    qm, proxy = proxied
    qm.append(RegisterUser(user_id="u1", email="u1@example.com"))
    qm.append(Purchase(user_id="u1", amount=100, currency="USD", transaction_id="t1"))
    proxy.armed.set()
    with pytest.raises(Unavailable):
        qm.append(Use(user_id="u1", amount=30, reason="lost reply"))
    assert proxy.dropped.is_set()
    account = keys.account(keys.partition_of("u1", PARTITIONS), "u1")
    assert redis.hmget(account, "version", "balance") == [b"3", b"70"]
    # the client recovers on a fresh connection
    assert qm.append(Use(user_id="u1", amount=30, reason="next")).balance == 40


def test_a_batch_whose_reply_is_lost_is_recorded_once(
    proxied: tuple[QueueManager, ReplyDropper], redis: redis_py.Redis
) -> None:
    qm, proxy = proxied
    users = [f"b{i}" for i in range(40)]  # several script calls per partition
    qm.append_batch([(RegisterUser(user_id=u, email=f"{u}@example.com"), 2, None) for u in users])
    qm.append_batch(
        [
            (Purchase(user_id=u, amount=50, currency="USD", transaction_id=f"t-{u}"), 2, None)
            for u in users
        ]
    )
    proxy.armed.set()
    with pytest.raises(Unavailable):
        qm.append_batch([(Use(user_id=u, amount=5, reason="lost"), 2, None) for u in users])
    accounts = {
        tuple(redis.hmget(keys.account(keys.partition_of(u, PARTITIONS), u), "version", "balance"))
        for u in users
    }
    # the calls Redis got before the connection broke ran once; the rest did not run
    # (each event is atomic on its own; the caller retries with Idempotency-Keys)
    assert (b"3", b"45") in accounts
    assert accounts <= {(b"2", b"50"), (b"3", b"45")}


def test_an_enqueue_whose_reply_is_lost_is_queued_once(
    proxied: tuple[QueueManager, ReplyDropper], redis: redis_py.Redis
) -> None:
    qm, proxy = proxied
    qm.enqueue("default", "noop", {"n": 1})
    before = sum(
        redis.xlen(keys.stream(p, level))
        for p in keys.partitions(PARTITIONS)
        for level in keys.LEVELS_DESC
    )
    proxy.armed.set()
    with pytest.raises(Unavailable):
        qm.enqueue("default", "noop", {"n": 2})
    after = sum(
        redis.xlen(keys.stream(p, level))
        for p in keys.partitions(PARTITIONS)
        for level in keys.LEVELS_DESC
    )
    assert after == before + 1
