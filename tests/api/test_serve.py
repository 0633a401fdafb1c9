"""``ledger serve`` (api.cli.serve) through a local parser: refusal, options, a real uvicorn."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2 as httpx  # what starlette.testclient uses; in the dev extras
import pytest
import redis as redis_py
from pymongo.database import Database

from api.cli import serve as cli_serve
from api.cli.exits import RET_OK, RET_USAGE
from api.settings import Settings
from tests.helpers import eventually, serving

from .conftest import KEYS, PARTITIONS, auth

ROOT = Path(__file__).resolve().parents[2]
KEYS_ENV = ",".join(f"{k}:{r}" for k, r in KEYS.items())


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ledger")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--log-level", default="INFO")

    cli_serve.add_parsers(sub, common)
    return parser.parse_args(["serve", *argv])


def test_refuses_a_public_host_without_keys(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Any] = []
    monkeypatch.setattr("uvicorn.run", lambda *a, **kw: calls.append((a, kw)))
    settings = Settings(redis_url="redis://127.0.0.1:1/0")
    assert cli_serve.run(parse("--host", "0.0.0.0"), settings) == RET_USAGE
    assert "without API keys" in capsys.readouterr().err and not calls


def test_insecure_keys_or_loopback_start_uvicorn_with_the_factory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda *a, **kw: calls.append({"target": a[0], **kw}))
    monkeypatch.setattr(os, "environ", dict(os.environ))
    bare = Settings(redis_url="redis://127.0.0.1:1/0")
    keyed = Settings(redis_url="redis://127.0.0.1:1/0", api_keys=dict(KEYS))
    for argv, settings in (
        (("--host", "0.0.0.0", "--insecure"), bare),
        (("--host", "10.1.2.3", "--port", "9001", "--workers", "3"), keyed),
        (("--host", "::1"), bare),
        (("--host", "localhost"), bare),
    ):
        assert cli_serve.run(parse(*argv), settings) == RET_OK, argv
    assert [c["host"] for c in calls] == ["0.0.0.0", "10.1.2.3", "::1", "localhost"]
    assert calls[1]["port"] == 9001 and calls[1]["workers"] == 3
    assert all(c["target"] == cli_serve.FACTORY and c["factory"] for c in calls)
    # what the worker processes will read back
    assert cli_serve.settings_from_env().api_keys == {}
    os.environ.update(cli_serve.settings_env(keyed))
    assert cli_serve.settings_from_env() == keyed


def test_bad_options_are_usage_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("uvicorn.run", lambda *a, **kw: pytest.fail("must not start"))
    for argv in (("--workers", "0"), ("--port", "70000"), ("--rate-per-s", "nan")):
        with pytest.raises(SystemExit) as exited:  # argparse's own usage error
            parse(*argv)
        assert exited.value.code == RET_USAGE, argv
    assert cli_serve.run(parse(), Settings()) == RET_USAGE  # no REDIS_URL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SERVE = """
import sys
from api.cli.serve import run, settings_from_env
from tests.api.test_serve import parse
sys.exit(run(parse(*sys.argv[1:]), settings_from_env()))
"""


@pytest.mark.slow  # ledger serve with two worker processes
def test_serves_with_two_workers_and_stops_on_sigterm(
    redis: redis_py.Redis, redis_url: str, mongo_url: str, mongo_db: Database[Any]
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "MONGO_URL": mongo_url,
        "MONGO_DB": mongo_db.name,
        "LEDGER_PARTITIONS": str(PARTITIONS),
        "LEDGER_API_KEYS": KEYS_ENV,
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SERVE,
            "--port",
            str(port),
            "--workers",
            "2",
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        eventually(
            lambda: serving(base, proc, proc.communicate), message="the server did not start"
        )
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/api/queue/stats").status_code == 401
            created = client.post(
                "/api/users", json={"user_id": "srv", "email": "s@x"}, headers=auth("producer")
            )
            assert created.status_code == 201 and created.json()["version"] == 1
            assert client.get("/openapi.json").json()["openapi"] == "3.1.0"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, err
