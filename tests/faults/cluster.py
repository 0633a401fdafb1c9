"""The storm's moving parts: private servers and real ``python -m api …`` processes
that a chaos loop SIGKILLs and restarts."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from api.dev.deployment import Deployment
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parents[2]

WORKER = [
    "worker",
    "--import",
    "tests.faults.handlers",
    "--concurrency",
    "2",
    "--claim-idle-ms",
    "3000",
    "--max-attempts",
    "6",
    "--backoff-ms",
    "50",
]
PROJECTOR = ["project", "--batch", "300", "--claim-idle-ms", "1000"]
SCHEDULER = ["scheduler"]


class Cluster(Deployment):
    """Named processes of one deployment; each can be killed and started again."""

    def __init__(self, logs: Path, env: dict[str, str], api_port: int) -> None:
        super().__init__(env=env, log_dir=logs, cwd=ROOT, log_level="WARNING")
        self.api_port = api_port
        self.commands: dict[str, list[str]] = {
            "worker-0": WORKER,
            "worker-1": WORKER,
            "projector": PROJECTOR,
            "scheduler": SCHEDULER,
            "api": ["serve", "--port", str(api_port), "--rate-per-s", "0"],
        }

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start_all(self) -> None:
        for name in self.commands:
            self.start(name, *self.commands[name])

    def stop_all(self) -> None:
        """SIGKILL every process (the storm ends as it ran), then close the logs."""
        for name in list(self.procs):
            self.kill(name)
        self.close()

    def wait_api(self, timeout: float = 30) -> None:
        def healthy() -> bool:
            with urllib.request.urlopen(self.api_url + "/health", timeout=2) as r:
                return bool(r.status == 200)

        eventually(
            healthy,
            timeout=timeout,
            interval=0.1,
            ignoring=(OSError,),
            message=f"the API did not answer on {self.api_url}",
        )


def read_records(paths: list[Path]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in paths:
        if path.exists():
            out.extend(json.loads(line) for line in path.read_text().splitlines() if line)
    return out
