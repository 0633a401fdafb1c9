"""Process facts from /proc for the tests that kill a parent and look for orphans.

A process is named by (pid, start time) so that a reused pid is not mistaken
for the one we saw; a zombie counts as gone (it runs nothing, and whether
anyone reaps it depends on the machine's init).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable
from pathlib import Path

from tests.helpers import eventually

Proc = tuple[int, int]  # (pid, start time in clock ticks since boot)


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def proc(pid: int) -> Proc:
    return pid, int(_stat(pid)[19])


def running(p: Proc) -> bool:
    try:
        fields = _stat(p[0])
    except (OSError, ValueError):
        return False
    return int(fields[19]) == p[1] and fields[0] not in ("Z", "X")


def descendants(pid: int) -> list[Proc]:
    """Every running process below ``pid`` (not ``pid`` itself)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                children.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
    found: list[Proc] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError, ValueError, IndexError):
            found.append(proc(p))
            todo.extend(children.get(p, []))
    return [p for p in found if running(p)]


def wait_gone(procs: Iterable[Proc], timeout: float) -> list[Proc]:
    """Poll until none of ``procs`` runs; return those still running at the deadline
    (the caller's assertion then names them)."""
    procs = list(procs)
    with contextlib.suppress(AssertionError):
        eventually(lambda: not any(running(p) for p in procs), timeout=timeout)
    return [p for p in procs if running(p)]


def kill_all(procs: Iterable[Proc]) -> None:
    """SIGKILL whichever of ``procs`` still runs (a test's last resort)."""
    for p in procs:
        if running(p):
            with contextlib.suppress(OSError):
                os.kill(p[0], signal.SIGKILL)


def describe(procs: Iterable[Proc]) -> str:
    out = []
    for pid, _ in procs:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            cmd = "?"
        out.append(f"{pid}: {cmd[:120]}")
    return "; ".join(out)
