"""Child processes that die with their parent.

A demo, a test session or a benchmark that is killed must not leave its
servers and workers running, orphaned, for ever. Two mechanisms, because each
alone has a gap:

* ``popen_child`` asks Linux for a parent-death signal (``PR_SET_PDEATHSIG``)
  in the forked child before it execs. The kernel sends it when the *thread*
  that forked exits, so it is only set when spawning from the main thread
  (whose end is the process's end); a child spawned from another thread would
  otherwise die with that thread.
* ``watch_parent``, called at the start of ``python -m api``, is a watchdog
  thread that kills the process once its parent has gone (its ppid changes).
  It covers children spawned from other threads and non-Linux systems.
  ``popen_child`` turns it on through the ``LEDGER_PARENT_PID`` variable, which
  the watchdog removes from the environment so grandchildren do not inherit it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "PARENT_ENV",
    "death_signal_supported",
    "popen_child",
    "signal_child",
    "stop_children",
    "watch_parent",
]

PARENT_ENV = "LEDGER_PARENT_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _load_prctl() -> Callable[..., int] | None:
    # Resolved once in the parent: the forked child must not load libraries.
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_prctl = _load_prctl()


def death_signal_supported() -> bool:
    """Can a child spawned from this thread get a parent-death signal?"""
    return _prctl is not None and threading.current_thread() is threading.main_thread()


def _die_with(parent: int, sig: int) -> Callable[[], None]:
    prctl = _prctl
    assert prctl is not None

    def preexec() -> None:  # runs in the forked child, before exec
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def popen_child(
    args: Sequence[str],
    *,
    death_signal: int = signal.SIGKILL,
    env: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> subprocess.Popen[bytes]:
    """``subprocess.Popen`` for a long-running child that must not outlive this process.

    SIGKILL is the default death signal: every process of this project is safe
    to kill at any moment, and a child must not be able to ignore it.
    """
    if "preexec_fn" in kwargs:
        raise TypeError("popen_child sets preexec_fn itself")
    parent = os.getpid()
    child_env = dict(os.environ if env is None else env)
    child_env[PARENT_ENV] = str(parent)
    preexec = _die_with(parent, death_signal) if death_signal_supported() else None
    return subprocess.Popen(list(args), env=child_env, preexec_fn=preexec, **kwargs)


def signal_child(proc: subprocess.Popen[bytes], sig: int, *, group: bool = False) -> bool:
    """Send ``sig`` to ``proc`` (its whole process group with ``group``) if it still runs."""
    if proc.poll() is not None:
        return False
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    return True


def stop_children(
    procs: Sequence[subprocess.Popen[bytes]], timeout: float = 30.0, *, group: bool = False
) -> None:
    """SIGTERM each child (its whole process group with ``group``), wait up to
    ``timeout`` s in all, then SIGKILL what is left; every child is reaped."""
    for proc in procs:
        signal_child(proc, signal.SIGTERM, group=group)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_child(proc, signal.SIGKILL, group=group)
            proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def watch_parent(interval: float = 0.5) -> bool:
    """If spawned by ``popen_child``, SIGKILL this process once its parent is gone.

    Returns whether a watchdog runs. The parent is the process this one had at
    start-up (a wrapper such as ``sh -c`` counts); if the spawner named in the
    environment is already gone, this process ends at once.
    """
    raw = os.environ.pop(PARENT_ENV, None)
    if raw is None or not raw.isdigit():
        return False
    if not _alive(int(raw)):
        os.kill(os.getpid(), signal.SIGKILL)
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
    return True
