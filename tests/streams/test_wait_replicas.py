"""``wait_replicas`` on a single Redis with one replica: ``WAIT`` rides behind
the script calls on their own connection; a short count is ``Unavailable``,
the write stays, and a retry with the same key finds it (and is confirmed)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest
import redis as redis_py

from api.dev.embedded import LOOPBACK, EmbeddedRedis
from ledger.commands import Purchase, Use
from ledger.errors import InsufficientCredits
from ledger.tasks import Priority
from streams import HandlerRegistry, QueueManager, StreamsConfig, Unavailable, keys
from streams.errors import ConfigError

PARTITIONS = 2


class Pair:
    """A master and its replica (no AOF: only replication matters here)."""

    def __init__(self, data_dir: Path) -> None:
        self.master = EmbeddedRedis(data_dir / "master", appendonly=False)
        self.replica = EmbeddedRedis(data_dir / "replica", appendonly=False)

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        with self.client(self.master) as c:
            c.config_set("repl-diskless-sync-delay", 0)  # the replica syncs at once
        with self.client(self.replica) as c:
            c.replicaof(LOOPBACK, self.master.port)
        self.wait_link()

    def client(self, server: EmbeddedRedis) -> redis_py.Redis:
        return redis_py.Redis(host=LOOPBACK, port=server.port, socket_timeout=10)

    def wait_link(self) -> None:
        deadline = time.monotonic() + 10
        with self.client(self.replica) as c:
            while c.info("replication").get("master_link_status") != "up":
                assert time.monotonic() < deadline, "the replica did not link"
                time.sleep(0.02)

    def waits(self) -> int:
        """WAIT commands the master ran since the last reset."""
        with self.client(self.master) as c:
            return int(c.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))

    def freeze(self) -> None:
        """SIGSTOP the replica: it reads nothing more, so it acknowledges nothing."""
        assert self.replica.pid is not None
        os.kill(self.replica.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.replica.pid is not None:
            os.kill(self.replica.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.thaw()
        self.replica.stop()
        self.master.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    servers = Pair(tmp_path_factory.mktemp("wait-pair"))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def qm(pair: Pair) -> Iterator[QueueManager]:
    manager = QueueManager(
        config=StreamsConfig(
            redis_url=pair.master.url, partitions=PARTITIONS, wait_replicas=1, wait_timeout_ms=300
        ),
        registry=HandlerRegistry(),
    )
    with pair.client(pair.master) as c:
        c.flushall()
        for field in fields(manager.scripts):  # loaded: no NOSCRIPT round in the counts
            c.script_load(getattr(manager.scripts, field.name).script)
        c.wait(1, 5000)
        c.config_resetstat()
    try:
        yield manager
    finally:
        manager.close()
        pair.thaw()


def test_appends_and_enqueues_wait_on_their_own_connection(qm: QueueManager, pair: Pair) -> None:
    qm.register_user("alice", "alice@example.com")
    qm.purchase("alice", 100, transaction_id="pay-1", idempotency_key="k-1")
    results = qm.append_batch(
        [
            (Use(user_id="alice", amount=1, reason=f"r{i}"), Priority.NORMAL, f"u-{i}")
            for i in range(40)  # several script calls: one WAIT behind them all
        ]
    )
    assert [r.balance for r in results if not isinstance(r, Exception)][-1] == 60
    qm.enqueue("default", "credit_calculation", {"user_id": "alice"}, idempotency_key="t-1")
    assert pair.waits() == 4  # register, purchase, the batch, the enqueue
    account = keys.account(keys.partition_of("alice", PARTITIONS), "alice")
    with pair.client(pair.replica) as c:  # answered means on the replica
        assert c.hget(account, "balance") == b"60"


def test_a_repeat_writes_so_that_its_wait_covers_the_first_write(pair: Pair) -> None:
    """Redis 7.2+ moves a connection's WAIT offset only when it writes: a repeat
    found by its key must write too, or its WAIT could pass before the first
    write (made on another connection) reached the replica."""
    with pair.client(pair.master) as c:
        c.flushall()
    qm = QueueManager(  # no WAIT: nothing but the scripts' own writes moves the offset
        config=StreamsConfig(redis_url=pair.master.url, partitions=PARTITIONS),
        registry=HandlerRegistry(),
    )

    def offset() -> int:
        with pair.client(pair.master) as c:
            return int(c.info("replication")["master_repl_offset"])

    try:
        qm.register_user("zed", "zed@example.com")
        qm.purchase("zed", 5, transaction_id="pay-z", idempotency_key="k-z")
        task = qm.enqueue("default", "credit_calculation", {"u": "z"}, idempotency_key="t-z")
        before = offset()
        assert qm.balance("zed") is not None and offset() == before  # a read moves nothing
        for repeat in (
            lambda: qm.purchase("zed", 5, transaction_id="pay-z", idempotency_key="k-z"),
            lambda: qm.purchase("zed", 5, transaction_id="pay-z"),  # by its transaction id
            lambda: qm.enqueue("default", "credit_calculation", {"u": "z"}, idempotency_key="t-z"),
        ):
            before = offset()
            result = repeat()
            assert result == task or getattr(result, "duplicate", False)
            assert offset() > before  # propagated: a write, though nothing changed
        state = qm.balance("zed")
        assert state is not None and (state["version"], state["balance"]) == (2, 5)
    finally:
        qm.close()


def test_a_replica_that_does_not_confirm_is_unavailable_and_the_retry_finds_the_write(
    qm: QueueManager, pair: Pair
) -> None:
    qm.register_user("bob", "bob@example.com")
    pair.freeze()
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable, match=r"only 0 of 1 replicas confirmed it within 300 ms"):
            qm.purchase("bob", 50, transaction_id="pay-b", idempotency_key="k-b")
        assert time.monotonic() - started >= 0.25  # the WAIT waited its timeout
        state = qm.balance("bob")
        assert state is not None and (state["version"], state["balance"]) == (2, 50)  # it stays
        with pytest.raises(Unavailable):  # still unconfirmed: a repeat is refused too
            qm.purchase("bob", 50, transaction_id="pay-b", idempotency_key="k-b")
        with pytest.raises(Unavailable):
            qm.enqueue("default", "credit_calculation", {"user_id": "bob"}, idempotency_key="t-b")
        # a refusal is decided on unconfirmed state: not answered either
        with pytest.raises(Unavailable):
            qm.use("bob", 1000, reason="too much")
    finally:
        pair.thaw()
    again = qm.purchase("bob", 50, transaction_id="pay-b", idempotency_key="k-b")
    assert (again.event_id, again.version, again.balance, again.duplicate) == ("bob:2", 2, 50, True)
    task = qm.enqueue("default", "credit_calculation", {"user_id": "bob"}, idempotency_key="t-b")
    assert qm.get_task_status(task) is not None
    with pytest.raises(InsufficientCredits):
        qm.use("bob", 1000, reason="too much")
    with pair.client(pair.replica) as c, pair.client(pair.master) as m:  # all answered: all there
        assert c.dbsize() == m.dbsize()


def test_the_calls_sent_again_after_noscript_wait_too(qm: QueueManager, pair: Pair) -> None:
    qm.register_user("carol", "carol@example.com")
    with pair.client(pair.master) as c:
        c.script_flush()
        c.config_resetstat()
    results = qm.append_batch(
        [(Purchase(user_id="carol", amount=5, transaction_id="t-1"), Priority.HIGH, "k-c")]
    )
    assert not isinstance(results[0], Exception) and results[0].balance == 5
    assert pair.waits() == 2  # behind the NOSCRIPT round and behind the round that ran


def test_more_replicas_than_exist_are_never_confirmed(pair: Pair) -> None:
    with pair.client(pair.master) as c:
        c.flushall()
    qm = QueueManager(
        config=StreamsConfig(
            redis_url=pair.master.url, partitions=PARTITIONS, wait_replicas=2, wait_timeout_ms=50
        ),
        registry=HandlerRegistry(),
    )
    try:
        with pytest.raises(Unavailable, match="only 1 of 2 replicas"):
            qm.register_user("dave", "dave@example.com")
    finally:
        qm.close()


def test_without_wait_replicas_no_wait_is_sent(pair: Pair) -> None:
    with pair.client(pair.master) as c:
        c.flushall()
        c.config_resetstat()
    qm = QueueManager(
        config=StreamsConfig(redis_url=pair.master.url, partitions=PARTITIONS),
        registry=HandlerRegistry(),
    )
    try:
        qm.register_user("erin", "erin@example.com")
        qm.enqueue("default", "credit_calculation", {"user_id": "erin"})
    finally:
        qm.close()
    assert pair.waits() == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("wait_replicas", -1),
        ("wait_replicas", 101),
        ("wait_replicas", True),
        ("wait_replicas", 1.0),
        ("wait_timeout_ms", 0),
        ("wait_timeout_ms", 60_001),
        ("wait_timeout_ms", "100"),
    ],
)
def test_stream_config_refuses_odd_wait_settings(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        StreamsConfig(**{field: value})  # type: ignore[arg-type]


def test_stream_config_reads_the_wait_variables() -> None:
    config = StreamsConfig.from_env({"LEDGER_WAIT_REPLICAS": "2", "LEDGER_WAIT_TIMEOUT_MS": " 250"})
    assert (config.wait_replicas, config.wait_timeout_ms, config.wait) == (2, 250, (2, 250))
    assert StreamsConfig.from_env({"LEDGER_WAIT_REPLICAS": " "}).wait is None
    for name, value in (
        ("LEDGER_WAIT_REPLICAS", "-1"),
        ("LEDGER_WAIT_REPLICAS", "one"),
        ("LEDGER_WAIT_REPLICAS", "9" * 40),
        ("LEDGER_WAIT_TIMEOUT_MS", "0"),
        ("LEDGER_WAIT_TIMEOUT_MS", "1e3"),
    ):
        with pytest.raises(ConfigError, match=f"^{name} must be a whole number between"):
            StreamsConfig.from_env({name: value})
