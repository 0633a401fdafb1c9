"""The suite's guards (tests/guards.py), run on small pytest sessions in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import eventually

pytestmark = pytest.mark.slow  # each test runs pytest in a subprocess

ROOT = Path(__file__).resolve().parent.parent


def run_pytest(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(source)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.guards",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            str(tmp_path / "test_inner.py"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_a_test_that_leaves_a_process_or_thread_errors_and_its_process_is_killed(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pid"
    result = run_pytest(
        tmp_path,
        f"""
import subprocess, threading, time
from pathlib import Path

def test_leaves_a_process():
    child = subprocess.Popen(["sleep", "300"])
    Path({str(pid_file)!r}).write_text(str(child.pid))

def test_leaves_a_thread():
    threading.Thread(target=time.sleep, args=(30,), name="leaky", daemon=True).start()

def test_clean():
    threading.Thread(target=time.sleep, args=(0.2,), name="brief").start()
""",
    )
    out = result.stdout
    assert "3 passed, 2 errors" in out, out
    assert "left 1 process(es) running (killed)" in out, out
    assert "left thread(s) running: leaky" in out, out
    pid = int(pid_file.read_text())
    eventually(lambda: not alive(pid), timeout=5, message=f"pid {pid} still runs")


@pytest.mark.parametrize("fixture", ["redis_server", "mongo_server"])
def test_a_wedged_session_server_is_restarted_for_the_next_test(
    tmp_path: Path, fixture: str
) -> None:
    result = run_pytest(
        tmp_path,
        f"""
import os, signal
import pytest
import redis
from api.dev.embedded import EmbeddedMongo, EmbeddedRedis
from projections.store import connect

@pytest.fixture(scope="session")
def {fixture}():
    kind = EmbeddedRedis if {fixture!r} == "redis_server" else EmbeddedMongo
    server = kind({str(tmp_path / "server")!r})
    server.start()
    yield server
    server.stop()

def test_wedges_the_server({fixture}):
    os.kill({fixture}.pid, signal.SIGSTOP)  # alive, but answers nothing

def test_meets_a_working_server({fixture}):
    if {fixture!r} == "redis_server":
        with redis.Redis(port={fixture}.port, socket_timeout=2) as client:
            assert client.ping()
    else:
        with connect({fixture}.url, socketTimeoutMS=2000) as client:
            client.t.c.insert_one({{"_id": 1}})
            assert client.t.c.find_one() == {{"_id": 1}}
""",
    )
    assert "2 passed" in result.stdout, result.stdout + result.stderr
    assert f"the session's {fixture} did not answer within 3s; restarting it" in result.stdout, (
        result.stdout
    )


def test_a_wedged_node_of_the_session_cluster_is_restarted_for_the_next_test(
    tmp_path: Path,
) -> None:
    """On the cluster backend (``--redis-backend=cluster``) ``redis_url`` is the
    session cluster's: the guard checks each of its nodes before a test."""
    result = run_pytest(
        tmp_path,
        f"""
import os, signal
import pytest
from api.dev.cluster import RedisClusterNodes
from streams.connection import connect, ping

@pytest.fixture(scope="session")
def redis_backend():
    return "cluster"

@pytest.fixture(scope="session")
def redis_backend_cluster():
    with RedisClusterNodes({str(tmp_path / "cluster")!r}, masters=2) as cluster:
        yield cluster

@pytest.fixture(scope="session")
def redis_url(redis_backend, redis_backend_cluster):
    return redis_backend_cluster.url

def test_wedges_a_node(redis_url, redis_backend_cluster):
    os.kill(redis_backend_cluster.nodes[1].pid, signal.SIGSTOP)  # alive, answers nothing

def test_meets_a_working_cluster(redis_url):
    client = connect(redis_url, socket_timeout=2)
    try:
        ping(client)  # every master
        client.set("k", "v")
    finally:
        client.close()
""",
    )
    assert "2 passed" in result.stdout, result.stdout + result.stderr
    assert "the session cluster's node on" in result.stdout, result.stdout
    assert "did not answer within 3s; restarting it" in result.stdout, result.stdout
