"""A stopped ``ledger demo`` leaves nothing running: not its API, workers,
projector or scheduler, nor its redis-server and Mongo-wire server.

Each test runs the real demo in a session of its own, waits until it has
proved its first load and is sending live traffic, signals only the demo's
own pid (as ``kill`` or make passing SIGTERM on would), and then looks for
every process that was below it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import eventually
from tests.proctree import Proc, descendants, describe, kill_all, wait_gone

# Real demo runs, signalled and waited for; a start may take its 120 s bound on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
LIVE = "traffic keeps flowing"
# redis-server, Mongo-wire server, 1 worker, scheduler, projector, API
EXPECTED_CHILDREN = 6


def _start_demo(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "MONGO_URL", "MONGO_DB", "LEDGER_PARTITIONS")
    }
    env["TMPDIR"] = str(tmp_path / "tmp")  # where the demo makes its data directory
    (tmp_path / "tmp").mkdir()
    output = tmp_path / "demo.out"
    with open(output, "wb") as out:
        demo = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "api",
                "demo",
                "--users",
                "10",
                "--events",
                "60",
                "--workers",
                "1",
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return demo, output


def _wait_live(demo: subprocess.Popen[bytes], output: Path, timeout: float = 120) -> None:
    def failure() -> str:
        return (
            f"the demo did not reach live traffic (exit {demo.poll()}):\n"
            f"{output.read_text(errors='replace')}"
        )

    def live() -> bool:
        if LIVE in output.read_text(errors="replace"):
            return True
        if demo.poll() is not None:
            pytest.fail(failure())
        return False

    eventually(live, timeout=timeout, interval=0.1, message=failure)


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda s: signal.Signals(s).name
)
def test_a_stopped_demo_leaves_nothing_running(tmp_path: Path, signum: int) -> None:
    demo, output = _start_demo(tmp_path)
    started: list[Proc] = []
    try:
        _wait_live(demo, output)
        started = descendants(demo.pid)
        assert len(started) >= EXPECTED_CHILDREN, describe(started)

        demo.send_signal(signum)
        code = demo.wait(60)
        # An orderly stop waits for each process; a SIGKILLed demo's children die
        # by their parent-death signal at once.
        left = wait_gone(started, 5 if signum == signal.SIGKILL else 30)
        assert left == [], (
            f"still running after {signal.Signals(signum).name}: "
            f"{describe(left)}\n{output.read_text(errors='replace')}"
        )
        if signum != signal.SIGKILL:
            text = output.read_text(errors="replace")
            assert code == 0, text
            assert f"{signal.Signals(signum).name}: stopping" in text
            assert list((tmp_path / "tmp").iterdir()) == []  # data directory removed
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        kill_all(started)


def test_a_second_signal_does_not_cut_the_drain(tmp_path: Path) -> None:
    demo, output = _start_demo(tmp_path)
    started: list[Proc] = []
    try:
        _wait_live(demo, output)
        started = descendants(demo.pid)
        demo.send_signal(signal.SIGINT)
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(60) == 0, output.read_text(errors="replace")
        assert wait_gone(started, 30) == []
        assert list((tmp_path / "tmp").iterdir()) == []
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        kill_all(started)
