"""``LEDGER_WAIT_REPLICAS`` / ``--wait-replicas`` and ``LEDGER_WAIT_TIMEOUT_MS`` /
``--wait-timeout-ms``: read like every other option (flags win, a bad value is one
line naming it, exit 2), carried to uvicorn's workers, and into ``StreamsConfig``."""

from __future__ import annotations

import os
from typing import Any

import pytest

from api import cli
from api.cli import serve as cli_serve
from api.cli.exits import RET_OK, RET_USAGE
from api.settings import EnvError, Settings, resolve

from .test_serve import parse

WAIT = "LEDGER_WAIT_REPLICAS"
TIMEOUT = "LEDGER_WAIT_TIMEOUT_MS"
DOWN = "redis://127.0.0.1:1/0"

HOSTILE = {
    WAIT: ["-1", "abc", "1.5", "1e3", "0x2", "1_0", "\uff11", "101", "9" * 40, "nan", "2 3"],
    TIMEOUT: ["0", "-5", "60001", "9" * 5000, "1s", "inf", "\u00e9"],
}


def test_defaults_and_good_values() -> None:
    d = Settings.from_env({"REDIS_URL": DOWN})
    assert (d.wait_replicas, d.wait_timeout_ms) == (0, 1000)
    assert d.streams().wait is None  # 0 replicas: no WAIT at all
    s = Settings.from_env({"REDIS_URL": DOWN, WAIT: " 2 ", TIMEOUT: "250"})
    assert (s.wait_replicas, s.wait_timeout_ms) == (2, 250)
    config = s.streams()
    assert (config.wait_replicas, config.wait_timeout_ms, config.wait) == (2, 250, (2, 250))
    blank = Settings.from_env({WAIT: " ", TIMEOUT: ""})  # blank counts as unset
    assert (blank.wait_replicas, blank.wait_timeout_ms) == (0, 1000)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_values_name_the_variable(name: str) -> None:
    for value in HOSTILE[name]:
        with pytest.raises(EnvError) as refused:
            Settings.from_env({name: value})
        text = str(refused.value)
        assert text.startswith(f"{name}: ") and "\n" not in text and len(text) < 200, text
        with pytest.raises(EnvError, match=f"^{name}: "):
            resolve(cli.build_parser().parse_args(["serve"]), {name: value})


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_values_exit_2_with_one_line(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("uvicorn.run", lambda *a, **kw: pytest.fail("must not start"))
    monkeypatch.setenv("REDIS_URL", DOWN)
    for value in HOSTILE[name]:
        monkeypatch.setenv(name, value)
        assert cli.main(["serve"]) == RET_USAGE, value
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"ledger: error: {name}: "), err


def test_hostile_flags_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for flag, values in (
        ("--wait-replicas", HOSTILE[WAIT]),
        ("--wait-timeout-ms", HOSTILE[TIMEOUT]),
    ):
        for value in values:
            with pytest.raises(SystemExit) as exited:
                parse(f"{flag}={value}")
            assert exited.value.code == RET_USAGE, (flag, value)
            err = capsys.readouterr().err
            assert f"argument {flag}: " in err and "Traceback" not in err


def test_a_flag_overrides_its_variable_even_a_bad_one() -> None:
    args = resolve(
        cli.build_parser().parse_args(["serve", "--wait-replicas", "1", "--wait-timeout-ms", "50"]),
        {WAIT: "-1", TIMEOUT: "0"},
    )
    assert (args.wait_replicas, args.wait_timeout_ms) == (1, 50)
    args = resolve(cli.build_parser().parse_args(["serve"]), {WAIT: "3"})
    assert (args.wait_replicas, args.wait_timeout_ms) == (3, 1000)
    assert args.env_sources["wait_replicas"] == WAIT


def test_serve_hands_them_to_its_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda *a, **kw: calls.append(kw))
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if "LEDGER" not in k})
    os.environ[TIMEOUT] = "400"  # from the environment; the replicas from the flag
    args = parse("--wait-replicas", "2")
    assert cli_serve.run(args, Settings(redis_url=DOWN)) == RET_OK and calls
    worker = cli_serve.settings_from_env()  # what each uvicorn worker builds its app from
    assert (worker.wait_replicas, worker.wait_timeout_ms) == (2, 400)
    assert worker.streams().wait == (2, 400)


def test_help_names_both_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"env {WAIT})" in text and f"env {TIMEOUT})" in text
