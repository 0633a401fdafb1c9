"""A deployment's processes: ``python -m api <command> …`` children started and stopped together.

The demo, the fault tests and the benchmarks all run real ``ledger`` processes
(API, workers, projectors, scheduler) against one Redis and one MongoDB. A
``Deployment`` gives them one environment (the connection variables it is
given, and none it is not: the caller's shell cannot point a child elsewhere),
a log file each when asked, and one way to end them: SIGTERM, a bounded wait,
then SIGKILL. Each child is spawned with ``api.procs.popen_child``, so it dies
with the process that started it even when that one is SIGKILLed.

Processes are named; a name remembers its command line, so a process can be
killed and started again as it was (what the chaos tests do).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from ..procs import popen_child, signal_child, stop_children

__all__ = ["CONNECTION_ENV", "Deployment"]

#: What says which deployment a process belongs to; set from the constructor or unset.
CONNECTION_ENV = ("REDIS_URL", "MONGO_URL", "MONGO_DB", "LEDGER_PARTITIONS")


class Deployment:
    """Named ``python -m <module> …`` children of one deployment; a context manager
    that stops them all on exit."""

    def __init__(
        self,
        redis_url: str | None = None,
        mongo_url: str | None = None,
        *,
        mongo_db: str | None = None,
        partitions: int | None = None,
        log_level: str | None = None,
        log_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        new_session: bool = False,
    ) -> None:
        """``env`` is laid over the inherited environment last (it may set connection
        variables too). ``log_level`` becomes ``LEDGER_LOG_LEVEL``. With ``log_dir``
        each process appends its output to ``<log_dir>/<name>.log``. With
        ``new_session`` each child leads its own session and signals go to its whole
        process group (children that fork, like uvicorn's ``--workers``)."""
        given = {
            "REDIS_URL": redis_url,
            "MONGO_URL": mongo_url,
            "MONGO_DB": mongo_db,
            "LEDGER_PARTITIONS": None if partitions is None else str(partitions),
        }
        base = {k: v for k, v in os.environ.items() if k not in CONNECTION_ENV}
        base.update({k: v for k, v in given.items() if v is not None})
        if log_level is not None:
            base["LEDGER_LOG_LEVEL"] = log_level
        base.update(env or {})
        self.env: dict[str, str] = base
        self.log_dir = log_dir
        self.cwd = cwd
        self.new_session = new_session
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts: Counter[str] = Counter()
        self.kills: Counter[str] = Counter()
        self._commands: dict[str, tuple[list[str], dict[str, Any]]] = {}
        self._logs: list[IO[bytes]] = []

    def start(
        self, name: str, *args: str, module: str = "api", **popen: Any
    ) -> subprocess.Popen[bytes]:
        """Start ``python -m <module> *args`` as ``name`` (``module`` is the ``ledger``
        command unless told otherwise); ``popen`` goes to ``subprocess.Popen``."""
        argv = [sys.executable, "-m", module, *args]
        self._commands[name] = (argv, popen)
        return self._spawn(name)

    def _spawn(self, name: str) -> subprocess.Popen[bytes]:
        argv, popen = self._commands[name]
        kwargs: dict[str, Any] = {"cwd": self.cwd, "start_new_session": self.new_session, **popen}
        if self.log_dir is not None and "stdout" not in kwargs:
            log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in close()
            self._logs.append(log)
            kwargs.update(stdout=log, stderr=subprocess.STDOUT)
        proc = popen_child(argv, env=self.env, **kwargs)
        self.procs[name] = proc
        self.starts[name] += 1
        return proc

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """SIGKILL ``name`` if it runs, then start it again with its command line."""
        self.kill(name)
        return self._spawn(name)

    def revive(self) -> list[str]:
        """Start again every process that has exited (e.g. it found Redis down)."""
        gone = self.exited()
        for name in gone:
            self._spawn(name)
        return gone

    def exited(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is not None]

    def signal(self, name: str, sig: int) -> bool:
        """Send ``sig`` to ``name`` (its process group with ``new_session``) if it runs."""
        return signal_child(self.procs[name], sig, group=self.new_session)

    def kill(self, name: str) -> None:
        """SIGKILL ``name`` (counted in ``kills`` if it was running) and reap it."""
        if self.signal(name, signal.SIGKILL):
            self.kills[name] += 1
        self.procs[name].wait()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every process, wait up to ``timeout`` s in all, SIGKILL what is left."""
        stop_children(list(self.procs.values()), timeout, group=self.new_session)
        self.close()

    def close(self) -> None:
        """Close the log files (the processes must have ended)."""
        for log in self._logs:
            log.close()
        self._logs.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
