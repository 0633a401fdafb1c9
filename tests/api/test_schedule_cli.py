"""``ledger schedules`` and ``ledger scheduler`` as real processes: SIGKILLed schedulers
still fire each tick of an every-second schedule exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import redis as redis_py

from api.cli import RET_ERROR, RET_OK, RET_USAGE
from streams import keys, schedules
from streams.replies import entries as stream_entries
from tests.helpers import eventually

from .test_cli import ROOT, ledger

pytestmark = pytest.mark.slow  # real processes, killed


def env_of(redis_url: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "LEDGER_PARTITIONS": "2"}


def fired_ids(client: redis_py.Redis) -> list[str]:
    ids = []
    for p in keys.partitions(2):
        for level in keys.LEVELS_DESC:
            for _, fields in stream_entries(client, keys.stream(p, level)):
                if fields.get(b"ty") == b"beat":
                    ids.append(fields[b"id"].decode())
    return ids


def test_schedules_add_list_remove(redis: redis_py.Redis, redis_url: str) -> None:
    env = env_of(redis_url)
    added = ledger(
        "schedules", "add", "nightly", "--cron", "0 3 * * *", "--queue", "default",
        "--type", "report", "--data", '{"x": 1}', "--timezone", "Europe/Paris", env=env,
    )  # fmt: skip
    assert added.returncode == RET_OK, added.stderr
    assert json.loads(added.stdout)["created"] is True
    listed = ledger("schedules", "list", env=env)
    assert listed.returncode == RET_OK
    (one,) = json.loads(listed.stdout)
    assert one["name"] == "nightly" and one["timezone"] == "Europe/Paris"
    assert one["task_data"] == {"x": 1}

    bad = ledger(
        "schedules", "add", "x", "--cron", "* * *", "--queue", "default", "--type", "t", env=env
    )
    assert bad.returncode == RET_USAGE and "cron" in bad.stderr
    assert ledger("schedules", "remove", "nightly", env=env).returncode == RET_OK
    assert ledger("schedules", "remove", "nightly", env=env).returncode == RET_ERROR
    assert json.loads(ledger("schedules", "list", env=env).stdout) == []


def start_scheduler(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "api", "scheduler"],
        cwd=ROOT,
        env={**os.environ, **env},
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_sigkilled_schedulers_still_fire_each_tick_once(
    redis: redis_py.Redis, redis_url: str
) -> None:
    env = env_of(redis_url)
    added = ledger(
        "schedules", "add", "beat", "--cron", "* * * * * *", "--queue", "default",
        "--type", "beat", env=env,
    )  # fmt: skip
    assert added.returncode == RET_OK, added.stderr
    # one scheduler runs throughout; beside it, one is SIGKILLed and replaced every
    # ~0.7 s (a tick missed while none runs would coalesce: legitimate, not tested
    # here, so a slow start on a loaded machine cannot make a gap)
    steady = start_scheduler(env)
    procs: list[subprocess.Popen[Any]] = [start_scheduler(env)]
    try:
        # the first run may coalesce the ticks missed while the schedulers started
        eventually(lambda: fired_ids(redis), timeout=30, message="the first tick never fired")
        start, before = time.time(), set(fired_ids(redis))
        for _ in range(4):
            time.sleep(0.7)
            victim = procs.pop(0)
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            procs.append(start_scheduler(env))
        time.sleep(2.0)
    finally:
        for p in (steady, *procs):
            p.send_signal(signal.SIGTERM)
        for p in (steady, *procs):
            p.wait(20)
    end = time.time()
    ids = fired_ids(redis)
    assert len(ids) == len(set(ids)), "a tick fired twice"
    # since the first run, every tick is there, once
    new = set(ids) - before
    ticks = [
        t
        for t in range(int(start) * 1000 - 2000, int(end) * 1000 + 1000, 1000)
        if schedules.task_id("beat", t) in new
    ]
    assert len(ticks) == len(new) >= 3
    assert ticks == list(range(ticks[0], ticks[-1] + 1000, 1000)), ticks
    assert not redis.smembers(keys.FIRING)
    assert int(redis.hget(keys.SCHEDULE_STATS, "fired") or 0) == len(ids)
