"""Helpers the process-level benchmarks share: machine facts, child processes,
/proc readings (CPU, peak RSS), percentiles, pipelined enqueue, results.

Everything runs on 127.0.0.1 against private servers (``api.dev.embedded``).
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from api.procs import popen_child, stop_children
from ledger.tasks import Priority
from streams import keys

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def facts(redis_url: str) -> dict[str, Any]:
    """The machine and server the figures were measured on."""
    info = redis.Redis.from_url(redis_url).info("server")
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "redis": info.get("redis_version"),
        "python": platform.python_version(),
        "command": " ".join(["python -m bench." + Path(sys.argv[0]).stem, *sys.argv[1:]]),
    }


def print_facts(f: Mapping[str, Any]) -> None:
    print(
        f"# nproc={f['nproc']} cpu={f['cpu']!r} redis-server {f['redis']} "
        f"python {f['python']}\n# command: {f['command']}",
        flush=True,
    )


def write(name: str, payload: Mapping[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def summary(values: Sequence[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": pct(values, 0.50),
        "p99": pct(values, 0.99),
        "max": max(values) if values else None,
    }


# -- child processes ---------------------------------------------------------------
def spawn(
    args: Sequence[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A child in its own session, output to ``log``, cwd the repository root; it dies
    with the benchmark (``api.procs``), so an interrupted run leaves nothing behind."""
    full = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "MONGO_URL", "LEDGER_PARTITIONS")
    }
    full.update(env or {})
    full["PYTHONPATH"] = str(ROOT)
    with open(log, "ab") as out:
        return popen_child(
            list(args),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=full,
            start_new_session=True,
        )


def ledger(*args: str) -> list[str]:
    return [sys.executable, "-m", "api", *args]


def stop(procs: Sequence[subprocess.Popen[bytes]], timeout: float = 20.0) -> None:
    """SIGTERM each (its whole session), wait, then SIGKILL what is left."""
    stop_children(procs, timeout, group=True)


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc/*/stat ppids)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(_stat(int(entry.name))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_ms(pids: Sequence[int]) -> float:
    """utime+stime+cutime+cstime (ms) of these processes and all below them."""
    total = 0
    for root in pids:
        for p in descendants(root):
            try:
                f = _stat(p)
            except OSError:
                continue
            total += sum(int(x) for x in f[11:15])  # utime stime cutime cstime
    return total * 1000 / TICK


def peak_rss_kb(pid: int) -> int:
    """VmHWM of a live process (kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def api_up(port: int) -> bool:
    """Does ``ledger serve`` on this port answer ``GET /health`` with 200?"""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def wait_until(pred: Callable[[], bool], timeout: float, every: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return pred()


# -- the queue ------------------------------------------------------------------------
def task_times(
    client: redis.Redis, partitions: int, ids: Sequence[str]
) -> list[tuple[int, int, int, str]]:
    """(enqueued_at, started_at, finished_at, status) in ms for each task id."""
    out = []
    for i in range(0, len(ids), 1000):
        pipe = client.pipeline(transaction=False)
        for t in ids[i : i + 1000]:
            pipe.hmget(
                keys.task(keys.partition_of(t, partitions), t),
                ["enqueued_at", "started_at", "finished_at", "status"],
            )
        for e, s, f, st in pipe.execute():
            out.append((int(e or 0), int(s or 0), int(f or 0), (st or b"").decode()))
    return out


def group_infos(client: Any, partitions: int) -> Iterator[tuple[str, dict[Any, Any]]]:
    """(group name, its ``XINFO GROUPS`` row) on every priority stream that exists."""
    for p in keys.partitions(partitions):
        for level in keys.LEVELS_DESC:
            stream = keys.stream(p, level)
            if client.exists(stream):
                for g in client.xinfo_groups(stream):
                    yield (g["name"].decode() if isinstance(g["name"], bytes) else g["name"]), g


def groups_idle(client: Any, partitions: int, groups: Sequence[str] | None = None) -> bool:
    """Every group on every priority stream has nothing undelivered and nothing pending."""
    return not any(
        int(g.get("pending", 0)) or int(g.get("lag") or 0)
        for name, g in group_infos(client, partitions)
        if groups is None or name in groups
    )


def acknowledged(client: Any, partitions: int, group: str = "workers") -> int:
    """Entries ``group`` has read and acknowledged on every stream (entries-read -
    pending; the queues' stats counters are written once a second, so they lag)."""
    return sum(
        int(g.get("entries-read") or 0) - int(g["pending"])
        for name, g in group_infos(client, partitions)
        if name == group
    )


def worker_ready(client: redis.Redis, partitions: int, consumers: int) -> bool:
    """At least ``consumers`` consumers joined the ``workers`` group (LOW, p0)."""
    try:
        infos = client.xinfo_groups(keys.stream(keys.partitions(partitions)[0], Priority.LOW))
    except redis.ResponseError:
        return False
    for g in infos:
        name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
        if name == "workers":
            return int(g.get("consumers", 0)) >= consumers
    return False
