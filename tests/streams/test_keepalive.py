"""A handler may run longer than ``claim_idle_ms``: its worker keeps the claim alive
(``streams.keepalive``), so no other consumer takes the entry over while the worker
lives, and one does within ``claim_idle_ms`` (plus a sweep) once it is SIGKILLed."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from streams import HandlerRegistry, QueueManager, Worker
from tests.helpers import eventually

CLAIM_IDLE_MS = 400


def test_a_handler_running_five_times_claim_idle_is_never_taken_over(
    qm: QueueManager, registry: HandlerRegistry, make_worker: Callable[..., Worker]
) -> None:
    runs: list[str] = []

    def long(data: Mapping[str, Any], db_manager: Any) -> bool:
        runs.append(threading.current_thread().name)
        time.sleep(5 * CLAIM_IDLE_MS / 1000)
        return True

    registry.register("long", long)
    task_id = qm.enqueue("default", "long", {})
    slow = make_worker(claim_idle_ms=CLAIM_IDLE_MS)
    rival = make_worker(claim_idle_ms=CLAIM_IDLE_MS)  # its own process-wide housekeeping
    thread = threading.Thread(target=slow.run, name="slow", daemon=True)
    thread.start()
    try:
        eventually(lambda: runs == ["slow"], message="the slow worker did not start the task")
        taken = 0
        while qm.get_task_status(task_id)["status"] != "completed":  # type: ignore[index]
            taken += rival.step(block=False)  # sweeps every claim_idle/4 for idle entries
            time.sleep(0.02)
    finally:
        slow.stop()
        thread.join()
    assert runs == ["slow"] and taken == 0
    record = qm.get_task_status(task_id)
    assert record is not None and (record["status"], record["attempts"]) == ("completed", 1)
    assert slow.keepalive.renewed >= 3  # renewed every claim_idle/4 once the round is older


def test_a_short_round_renews_nothing(
    qm: QueueManager, registry: HandlerRegistry, make_worker: Callable[..., Worker]
) -> None:
    registry.register("quick", lambda data, db_manager: True)
    for _ in range(5):
        qm.enqueue("default", "quick", {})
    w = make_worker(claim_idle_ms=60_000)
    w.run_until_idle()
    assert w.keepalive.renewed == 0


@pytest.mark.slow
def test_after_sigkill_the_entry_is_taken_over_within_claim_idle(
    qm: QueueManager,
    registry: HandlerRegistry,
    make_worker: Callable[..., Worker],
    spawn_worker: Callable[..., subprocess.Popen[bytes]],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    claim_idle_ms = 1000
    task_id = qm.enqueue("default", "slow_insert", {"i": 1, "ms": 60_000})
    proc = spawn_worker("--claim-idle-ms", str(claim_idle_ms))
    eventually(lambda: qm.redis.llen("test:ran") == 1, message="the worker did not start it")
    took_over: list[float] = []

    def fast(data: Mapping[str, Any], db_manager: Any) -> bool:
        took_over.append(time.monotonic())
        return True

    registry.register("slow_insert", fast)
    rival = make_worker(claim_idle_ms=claim_idle_ms)
    alive_until = time.monotonic() + 3 * claim_idle_ms / 1000
    while time.monotonic() < alive_until:  # 3x claim_idle, worker alive: never taken
        assert rival.step(block=False) == 0
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = time.monotonic()
    deadline = killed + 5
    while not took_over and time.monotonic() < deadline:
        rival.step(block=False)
        time.sleep(0.01)
    assert took_over, "not taken over within 5 s of the SIGKILL"
    after = took_over[0] - killed
    # taken over once idle for claim_idle (less whatever idle it had at the kill), at
    # the next sweep of the rival (every claim_idle/4), with 0.5 s for a busy machine
    assert after <= 1.25 * claim_idle_ms / 1000 + 0.5, f"taken over {after:.2f} s after the kill"
    record = qm.get_task_status(task_id)
    assert record is not None and (record["status"], record["attempts"]) == ("completed", 2)
