"""Suite hygiene: a failing or hanging test cannot poison the tests after it.

Registered by tests/conftest.py (``pytest_plugins``). Around each test:

- the session's redis-server (or, on the cluster backend, every node of the
  session's Redis Cluster) and Mongo-wire server must answer within seconds
  before the test starts (the Mongo-wire server a write and a read: its storage
  can wedge while it still answers ping); one that does not (dead, or wedged by
  the test before) is killed and started again on the same port and data, so
  the next test meets a working server instead of waiting out its timeout;
- after the test (its own fixtures already torn down) every process it left
  behind is killed with its descendants, and every thread it left running past
  a short grace is reported: either is an error of that test.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_py
from pymongo import MongoClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from api.dev.cluster import RedisClusterNodes
from api.dev.embedded import EmbeddedMongo, EmbeddedRedis
from projections.store import connect
from tests.proctree import Proc, descendants, kill_all

PING_TIMEOUT_S = 3.0
THREAD_GRACE_S = 5.0
_probes: dict[tuple[str, int | None], MongoClient[dict[str, Any]]] = {}
# Threads that outlive a test by design: library housekeeping, not test work.
BACKGROUND_THREADS = (
    "pymongo",
    "asyncio_",
    "ThreadPoolExecutor",
    "AnyIO worker",
    "Dummy-",
    "playwright",
    "Thread-Monitor",
    "pydevd",
)


def _reap(procs: list[Proc]) -> None:
    """Our own children would otherwise linger as zombies once killed."""
    for pid, _ in procs:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def _redis_answers(server: EmbeddedRedis) -> bool:
    try:
        with redis_py.Redis(
            port=server.port,
            socket_timeout=PING_TIMEOUT_S,
            socket_connect_timeout=PING_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        ) as client:
            return bool(client.ping())
    except (redis_py.RedisError, OSError):
        return False


def _probe_client(server: EmbeddedMongo) -> MongoClient[dict[str, Any]]:
    """One client per server process, kept across tests: connecting anew before every
    test cost several times the check itself. A restarted server (new pid) gets a new one."""
    key = (server.url, server.pid)
    if key not in _probes:
        _close_probes()
        ms = int(PING_TIMEOUT_S * 1000)
        _probes[key] = connect(
            server.url, serverSelectionTimeoutMS=ms, socketTimeoutMS=ms, connectTimeoutMS=ms
        )
    return _probes[key]


def _close_probes() -> None:
    while _probes:
        _probes.popitem()[1].close()


def _mongo_answers(server: EmbeddedMongo) -> bool:
    try:
        # a write and a read: a server whose storage is wedged still answers ping
        probe = _probe_client(server)["_suite_guard"]["probe"]
        probe.replace_one({"_id": 1}, {"_id": 1, "at": time.time()}, upsert=True)
        return probe.find_one({"_id": 1}) is not None
    except Exception:  # any failure means: not fit to serve the next test
        _close_probes()
        return False


def pytest_unconfigure(config: pytest.Config) -> None:
    _close_probes()


def _say(config: pytest.Config, line: str) -> None:
    """A line on the terminal, past the output capture that is on during fixtures."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(line, red=True)


def _on_cluster(request: pytest.FixtureRequest) -> bool:
    """Whether the test's ``redis_url`` is the session cluster's (``--redis-backend``)."""
    names = request.fixturenames
    return "redis_backend" in names and request.getfixturevalue("redis_backend") == "cluster"


def _ensure_cluster_serving(request: pytest.FixtureRequest) -> None:
    """Every node of the session cluster answers, or is killed and started again."""
    cluster: RedisClusterNodes = request.getfixturevalue("redis_backend_cluster")
    for node in cluster.nodes:
        if node.pid is not None and _redis_answers(node):
            continue
        _say(
            request.config,
            f"{request.node.nodeid}: the session cluster's node on {node.port} did not "
            f"answer within {PING_TIMEOUT_S:g}s; restarting it",
        )
        node.kill()
        cluster.restart(node.port)


def _ensure_serving(request: pytest.FixtureRequest) -> None:
    cluster = "redis_url" in request.fixturenames and _on_cluster(request)
    if cluster:
        _ensure_cluster_serving(request)
    for name, answers in (("redis_server", _redis_answers), ("mongo_server", _mongo_answers)):
        # redis_url is the session redis_server's on the single backend
        wanted = name in request.fixturenames or (
            name == "redis_server" and "redis_url" in request.fixturenames and not cluster
        )
        if not wanted:
            continue
        server = request.getfixturevalue(name)
        if server.pid is not None and answers(server):
            continue
        _say(
            request.config,
            f"{request.node.nodeid}: the session's {name} did not answer "
            f"within {PING_TIMEOUT_S:g}s; restarting it",
        )
        server.kill()
        server.start()


@pytest.fixture(autouse=True)
def _hygiene(request: pytest.FixtureRequest) -> Iterator[None]:
    _ensure_serving(request)
    me = os.getpid()
    processes_before = set(descendants(me))
    threads_before = set(threading.enumerate())
    yield
    left = sorted(set(descendants(me)) - processes_before)
    kill_all(left)
    _reap(left)
    deadline = time.monotonic() + THREAD_GRACE_S
    while True:
        running = [
            t
            for t in threading.enumerate()
            if t not in threads_before
            and t.is_alive()
            and not t.name.startswith(BACKGROUND_THREADS)
        ]
        if not running or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    problems = []
    if left:
        problems.append(f"left {len(left)} process(es) running (killed): {[p for p, _ in left]}")
    if running:
        problems.append("left thread(s) running: " + ", ".join(t.name for t in running))
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)
