"""The storm's moving parts: private servers and real ``python -m api …`` processes
that a chaos loop SIGKILLs and restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import IO, Any

from api.procs import popen_child

ROOT = Path(__file__).resolve().parents[2]

WORKER = ["worker", "--import", "tests.faults.handlers", "--concurrency", "2",
          "--claim-idle-ms", "3000", "--max-attempts", "6", "--backoff-ms", "50"]
PROJECTOR = ["project", "--batch", "300", "--claim-idle-ms", "1000"]
SCHEDULER = ["scheduler"]


class Cluster:
    """Named processes of one deployment; each can be killed and started again."""

    def __init__(self, logs: Path, env: dict[str, str], api_port: int) -> None:
        self.logs = logs
        self.env = {**os.environ, **env}
        self.api_port = api_port
        self.commands: dict[str, list[str]] = {
            "worker-0": WORKER, "worker-1": WORKER, "projector": PROJECTOR,
            "scheduler": SCHEDULER,
            "api": ["serve", "--port", str(api_port), "--rate-per-s", "0"],
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[IO[bytes]] = []
        self.starts: Counter[str] = Counter()
        self.kills: Counter[str] = Counter()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self, name: str) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop_all
        self._files.append(log)
        # popen_child: a killed test run takes its cluster along.
        self.procs[name] = popen_child(
            [sys.executable, "-m", "api", *self.commands[name], "--log-level", "WARNING"],
            env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.starts[name] += 1

    def start_all(self) -> None:
        for name in self.commands:
            self.start(name)

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            self.kills[name] += 1
        proc.wait()

    def revive(self) -> list[str]:
        """Start again every process that has exited (e.g. it found Redis down)."""
        gone = [n for n, p in self.procs.items() if p.poll() is not None]
        for name in gone:
            self.start(name)
        return gone

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name)
        for f in self._files:
            f.close()
        self._files.clear()

    def wait_api(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.api_url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the API did not answer on {self.api_url}")
            time.sleep(0.1)


def read_records(paths: list[Path]) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        if path.exists():
            out.extend(json.loads(line) for line in path.read_text().splitlines() if line)
    return out
