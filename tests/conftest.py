"""Shared fixtures: one real redis-server and one Mongo-wire server per test session.

The servers come from ``api.dev.embedded``, the same code ``ledger demo`` runs. If
one cannot start, every test that needs it errors: nothing is skipped. Each
test gets a flushed Redis and a database of its own, and factory fixtures stop
whatever they started. SIGTERM and SIGHUP stop the run like Ctrl-C, so the
fixtures' teardown stops the servers; a SIGKILLed run loses them through their
parent-death signal (``api.procs``).

``--redis-backend=cluster`` (or ``LEDGER_TEST_REDIS=cluster``) runs the same tests
on a real 3-master Redis Cluster instead (``api.dev.cluster``, started once):
``redis_url`` is its ``redis+cluster://`` URL and ``redis`` a Cluster client, every
master flushed before the test; fixtures make their clients with
``streams.connection.connect``, which follows the URL. A test that only means
something on one node (it kills the session's redis-server, proxies its one port,
reads one server's INFO…) says so with ``@pytest.mark.single_redis("why")``: on the
cluster it is left out of the run (deselected), never reported as skipped.
``make test-cluster-core`` runs the core stream, projection and API modules this way.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pymongo
import pytest
from pymongo.database import Database

from api.dev.cluster import RedisClusterNodes
from api.dev.deployment import Deployment
from api.dev.embedded import EmbeddedMongo, EmbeddedRedis
from projections.store import connect
from streams.connection import RedisClient
from streams.connection import connect as redis_connect

pytest_plugins = ["tests.guards"]  # suite hygiene around every test (see tests/guards.py)

MakeRedisServer = Callable[..., EmbeddedRedis]
Handler = Callable[[int, Any], Any] | int | signal.Handlers | None

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
BACKENDS = ("single", "cluster")
BACKEND_ENV = "LEDGER_TEST_REDIS"
_previous: dict[int, Handler] = {}
_owner_pid = os.getpid()


def _stop_like_ctrl_c(signum: int, frame: Any) -> None:
    """The first SIGTERM/SIGHUP becomes a KeyboardInterrupt: pytest then runs every
    fixture's teardown. A second one kills at once (the default action)."""
    for each in _previous:
        signal.signal(each, signal.SIG_DFL)
    if os.getpid() != _owner_pid:  # a fork of pytest that did not exec: die as usual
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt(f"pytest stopped by {signal.Signals(signum).name}")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-backend",
        choices=BACKENDS,
        default=None,
        help=f"the Redis the tests' redis_url and redis fixtures point at: one redis-server "
        f"(single, the default) or a 3-master Redis Cluster (cluster); env {BACKEND_ENV}",
    )


def redis_backend_of(config: pytest.Config) -> str:
    """``--redis-backend``, else ``$LEDGER_TEST_REDIS``, else ``single``."""
    chosen = config.getoption("redis_backend") or os.environ.get(BACKEND_ENV) or "single"
    if chosen not in BACKENDS:
        raise pytest.UsageError(f"{BACKEND_ENV}={chosen!r}: expected one of {BACKENDS}")
    return str(chosen)


def pytest_report_header(config: pytest.Config) -> str:
    return f"redis backend: {redis_backend_of(config)}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the cluster backend, leave out (deselect) the tests marked ``single_redis``:
    they are not run there at all, rather than reported as skipped."""
    cluster = redis_backend_of(config) == "cluster"
    kept: list[pytest.Item] = []
    left_out: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("single_redis")
        if marker is not None:
            reason = marker.args[0] if marker.args else marker.kwargs.get("reason")
            if not isinstance(reason, str) or not reason.strip():
                raise pytest.UsageError(
                    f"{item.nodeid}: single_redis needs a reason (why one node)"
                )
        (left_out if cluster and marker is not None else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


def pytest_configure(config: pytest.Config) -> None:
    global _owner_pid
    if threading.current_thread() is not threading.main_thread():
        return
    _owner_pid = os.getpid()
    for signum in STOP_SIGNALS:
        previous = signal.getsignal(signum)
        if previous is None or previous is signal.SIG_IGN:  # e.g. nohup: stays ignored
            continue
        _previous[signum] = previous
        signal.signal(signum, _stop_like_ctrl_c)


def pytest_unconfigure(config: pytest.Config) -> None:
    while _previous:
        signum, previous = _previous.popitem()
        signal.signal(signum, previous)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendfsync="everysec")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedMongo]:
    server = EmbeddedMongo(tmp_path_factory.mktemp("mongo"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_backend(request: pytest.FixtureRequest) -> str:
    """``single`` or ``cluster`` (``--redis-backend``)."""
    return redis_backend_of(request.config)


@pytest.fixture(scope="session")
def redis_backend_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RedisClusterNodes]:
    """The 3-master cluster behind ``redis_url`` on the cluster backend."""
    cluster = RedisClusterNodes(tmp_path_factory.mktemp("redis-backend-cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest, redis_backend: str) -> str:
    """The session server's URL, or the session cluster's (``redis+cluster://``)."""
    if redis_backend == "cluster":
        cluster: RedisClusterNodes = request.getfixturevalue("redis_backend_cluster")
        return cluster.url
    server: EmbeddedRedis = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture(scope="session")
def mongo_url(mongo_server: EmbeddedMongo) -> str:
    return mongo_server.url


@pytest.fixture
def redis(redis_url: str) -> Iterator[RedisClient]:
    """A client on the session server (a Cluster client on the cluster backend),
    flushed before the test (every master) and closed after."""
    client = redis_connect(redis_url)
    client.flushall()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def mongo_client(mongo_url: str) -> Iterator[pymongo.MongoClient[dict[str, Any]]]:
    client = connect(mongo_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def mongo_db(mongo_client: pymongo.MongoClient[dict[str, Any]]) -> Iterator[Database[Any]]:
    """A database no other test uses, dropped afterwards."""
    name = f"t_{uuid4().hex[:12]}"
    try:
        yield mongo_client[name]
    finally:
        mongo_client.drop_database(name)


@pytest.fixture
def deployment(redis_url: str, mongo_url: str, mongo_db: Database[Any]) -> Iterator[Deployment]:
    """Real ``ledger`` processes (``python -m api …``) on the session's servers and this
    test's database, 4 partitions; whatever still runs is SIGKILLed at teardown."""
    group = Deployment(
        redis_url,
        mongo_url,
        mongo_db=mongo_db.name,
        partitions=4,
        log_level="WARNING",
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        yield group
    finally:
        for name in list(group.procs):
            group.kill(name)
        group.close()


@pytest.fixture
def fresh_redis_server(tmp_path: Path) -> Iterator[MakeRedisServer]:
    """Start private redis-servers (for tests that kill one); all are stopped at teardown.

    ``fresh_redis_server(appendfsync="always")`` returns a started ``EmbeddedRedis``;
    keyword arguments go to its constructor.
    """
    started: list[EmbeddedRedis] = []

    def make(**kw: Any) -> EmbeddedRedis:
        server = EmbeddedRedis(tmp_path / f"redis-{len(started)}", **kw)
        started.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in started:
            server.stop()
