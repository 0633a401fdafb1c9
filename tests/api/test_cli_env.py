"""Environment variables of ``ledger``: hostile values never crash it, flags win.

The console script is run as a real process (``.venv/bin/ledger``); refusals
happen before any connection, so most cases need no server.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis as redis_py

from api import cli
from api.settings import EnvError, FromEnv, Settings, env_value, resolve
from api.settings import redis_url as redis_url_option
from streams.connection import cluster_seeds

ROOT = Path(__file__).resolve().parents[2]
LEDGER = str(Path(sys.executable).with_name("ledger"))
DOWN = "redis://127.0.0.1:1/0"  # nothing listens: a refusal must come before connecting
SECRET = "supersecretvalue0123"

# Every variable a command reads, with a value it must refuse and a command that reads it.
HOSTILE: dict[str, tuple[str, tuple[str, ...]]] = {
    "REDIS_URL": ("http://example.com:abc", ("stats",)),
    "MONGO_URL": ("mongodb://h:notaport/", ("project", "--burst")),
    "MONGO_DB": ("bad/name$", ("stats",)),
    "LEDGER_PARTITIONS": ("0x10", ("stats",)),
    "LEDGER_COLLECTIONS": ("system.users", ("stats",)),
    "LEDGER_LOG_LEVEL": ("LOUD", ("stats",)),
    "LEDGER_API_KEYS": (f"{SECRET}:root", ("serve",)),
    "LEDGER_RATE_PER_S": ("abc", ("serve",)),
    "LEDGER_RATE_BURST": ("1e999", ("serve",)),
    "LEDGER_HOST": ("not a host", ("serve",)),
    "LEDGER_PORT": ("65536", ("serve",)),
    "LEDGER_WORKERS": ("-3", ("serve",)),
    "LEDGER_WAIT_REPLICAS": ("-1", ("serve",)),
    "LEDGER_WAIT_TIMEOUT_MS": ("0", ("serve",)),  # WAIT n 0 would block for ever
    "LEDGER_IMPORT": ("os; rm -rf /", ("worker", "--burst")),
    "LEDGER_CONCURRENCY": ("nan", ("worker", "--burst")),
    "LEDGER_QUEUES": ("default,hi gh", ("worker", "--burst")),
    "LEDGER_MAX_ATTEMPTS": ("1_000", ("worker", "--burst")),
    "LEDGER_BACKOFF_MS": ("\uff19", ("worker", "--burst")),  # a full-width 9
    "LEDGER_CLAIM_IDLE_MS": ("9" * 5000, ("worker", "--burst")),
    "LEDGER_FORGET_IDLE_MS": ("999", ("worker", "--burst")),
    "LEDGER_STATUS_TTL_S": ("0", ("worker", "--burst")),
    "LEDGER_ONLY": (",,,", ("project", "--burst")),
    "LEDGER_BATCH": ("abc", ("project", "--burst")),
    "LEDGER_TRIM_AFTER_MS": ("-1", ("project", "--burst")),
    "LEDGER_METRICS_PORT": ("0", ("scheduler",)),
    "LEDGER_METRICS_HOST": ("not a host", ("scheduler",)),
}
ODD = ("abc", "-1", "nan", "1e999", "\u00e9\u00e9", "x" * 3000, "'\"\\\n:,")

HELP_ARGV = [
    (),
    ("demo",),
    ("serve",),
    ("worker",),
    ("project",),
    ("scheduler",),
    ("stats",),
    ("dlq",),
    ("dlq", "list"),
    ("dlq", "requeue"),
    ("replay",),
    ("audit",),
    ("audit", "export"),
]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any ledger variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in HOSTILE}
    return {**env, **extra}


def ledger(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LEDGER, *argv], cwd=ROOT, env=env, text=True, capture_output=True, timeout=60
    )


def env_options() -> set[str]:
    """Every variable an option of ``ledger`` reads (walks the real parser)."""
    found: set[str] = set()

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action.default, FromEnv):
                found.add(action.default.env)
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(cli.build_parser())
    return found


def test_the_hostile_table_covers_every_variable() -> None:
    assert env_options() | {"LEDGER_API_KEYS", "LEDGER_COLLECTIONS"} == set(HOSTILE)


@pytest.mark.slow  # console-script subprocesses, one per command
@pytest.mark.parametrize("values", ["hostile", "odd"])
def test_help_works_whatever_the_environment(values: str) -> None:
    if values == "hostile":
        env = clean_env(**{k: v for k, (v, _) in HOSTILE.items()})
    else:
        env = clean_env(**{k: ODD[i % len(ODD)] for i, k in enumerate(HOSTILE)})
    for argv in HELP_ARGV if values == "hostile" else [(), ("worker",), ("serve",)]:
        result = ledger(*argv, "--help", env=env)
        assert result.returncode == 0, (argv, result.stderr)
        assert "usage: ledger" in result.stdout and "Traceback" not in result.stderr, argv


@pytest.mark.slow  # console-script subprocesses
def test_every_option_names_its_variable_in_help() -> None:
    env = clean_env()
    serve = " ".join(ledger("serve", "--help", env=env).stdout.split())
    for name in (
        "LEDGER_HOST",
        "LEDGER_PORT",
        "LEDGER_WORKERS",
        "LEDGER_RATE_PER_S",
        "LEDGER_RATE_BURST",
        "LEDGER_WAIT_REPLICAS",
        "LEDGER_WAIT_TIMEOUT_MS",
        "MONGO_URL",
        "MONGO_DB",
    ):
        assert f"env {name})" in serve, name
    worker = " ".join(ledger("worker", "--help", env=env).stdout.split())
    for name in (
        "LEDGER_CONCURRENCY",
        "LEDGER_QUEUES",
        "LEDGER_MAX_ATTEMPTS",
        "LEDGER_BACKOFF_MS",
        "LEDGER_CLAIM_IDLE_MS",
        "LEDGER_FORGET_IDLE_MS",
        "LEDGER_STATUS_TTL_S",
        "LEDGER_IMPORT",
        "REDIS_URL",
        "LEDGER_PARTITIONS",
        "LEDGER_LOG_LEVEL",
    ):
        assert f"env {name})" in worker, name
    project = " ".join(ledger("project", "--help", env=env).stdout.split())
    for name in (
        "LEDGER_BATCH",
        "LEDGER_ONLY",
        "LEDGER_TRIM_AFTER_MS",
        "LEDGER_CLAIM_IDLE_MS",
        "LEDGER_FORGET_IDLE_MS",
    ):
        assert f"env {name})" in project, name


@pytest.mark.slow  # a console-script subprocess per variable
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_bad_value_is_one_line_naming_the_variable(name: str) -> None:
    value, argv = HOSTILE[name]
    env = clean_env(**{"REDIS_URL": DOWN, "MONGO_URL": "mongodb://127.0.0.1:1/", name: value})
    result = ledger(*argv, env=env)
    assert result.returncode == cli.RET_USAGE, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("ledger: error: ") and f"{name}: " in lines[0], lines[0]
    assert SECRET not in result.stderr and len(lines[0]) < 300


@pytest.mark.slow  # a console-script subprocess
def test_unknown_queue_names_from_the_environment_name_the_variable(
    redis: redis_py.Redis, redis_url: str
) -> None:
    result = ledger(
        "worker", "--burst", env=clean_env(REDIS_URL=redis_url, LEDGER_QUEUES="default,nope")
    )
    assert result.returncode == cli.RET_USAGE
    assert result.stderr.strip() == (
        "ledger worker: error: LEDGER_QUEUES: unknown queue(s): "
        "nope (known: default, high_priority, low_priority)"
    )


NUMERIC = (
    "LEDGER_PARTITIONS",
    "LEDGER_RATE_PER_S",
    "LEDGER_RATE_BURST",
    "LEDGER_PORT",
    "LEDGER_WORKERS",
    "LEDGER_WAIT_REPLICAS",
    "LEDGER_WAIT_TIMEOUT_MS",
    "LEDGER_CONCURRENCY",
    "LEDGER_MAX_ATTEMPTS",
    "LEDGER_BACKOFF_MS",
    "LEDGER_CLAIM_IDLE_MS",
    "LEDGER_FORGET_IDLE_MS",
    "LEDGER_STATUS_TTL_S",
    "LEDGER_BATCH",
    "LEDGER_TRIM_AFTER_MS",
    "LEDGER_METRICS_PORT",
)


@pytest.mark.parametrize("value", ODD)
def test_odd_values_in_process(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every variable, many odd values, fast in this process: nothing raises; a refusal is
    exit 2 and one line naming the variable; numeric variables refuse them all."""
    for name, (_, argv) in HOSTILE.items():
        for k in HOSTILE:
            monkeypatch.delenv(k, raising=False)
        monkeypatch.setenv("REDIS_URL", DOWN)
        monkeypatch.setenv(name, value)
        code = cli.main(list(argv))
        err = capsys.readouterr().err.strip().splitlines()
        if name in NUMERIC or name in ("REDIS_URL", "LEDGER_LOG_LEVEL"):
            assert code == cli.RET_USAGE, (name, value, err)
        if code == cli.RET_USAGE:  # an EnvError, or a later refusal (e.g. a public host)
            assert len(err) == 1, (name, value, err)
            assert f"{name}: " in err[0] or not err[0].startswith("ledger: error:"), err


def parsed(*argv: str, env: dict[str, str]) -> argparse.Namespace:
    return resolve(cli.build_parser().parse_args(list(argv)), env)


def test_a_flag_overrides_its_variable_even_a_bad_one() -> None:
    env = {
        "LEDGER_BATCH": "abc",
        "LEDGER_CLAIM_IDLE_MS": "-5",
        "LEDGER_ONLY": ",",
        "LEDGER_PARTITIONS": "zero",
        "REDIS_URL": "nope",
        "LEDGER_TRIM_AFTER_MS": "x",
    }
    args = parsed(
        "project",
        "--batch",
        "7",
        "--claim-idle-ms",
        "900",
        "--only",
        "balances",
        "--partitions",
        "2",
        "--redis-url",
        "redis://h:1/0",
        "--trim-after-ms",
        "0",
        env=env,
    )
    assert (
        args.batch,
        args.claim_idle_ms,
        args.only,
        args.partitions,
        args.redis_url,
        args.trim_after_ms,
    ) == (7, 900, ("balances",), 2, "redis://h:1/0", 0)
    assert args.env_sources == {}
    with pytest.raises(EnvError, match="LEDGER_BATCH: 'abc' is not a whole number"):
        parsed("project", env=env)


def test_variables_fill_what_the_flags_leave() -> None:
    env = {
        "LEDGER_CONCURRENCY": "3",
        "LEDGER_QUEUES": "default, low_priority",
        "LEDGER_MAX_ATTEMPTS": "9",
        "LEDGER_BACKOFF_MS": "250",
        "LEDGER_IMPORT": "json,api.dev.demo_handlers",
        "LEDGER_CLAIM_IDLE_MS": " ",
        "LEDGER_LOG_LEVEL": "warning",
    }
    args = parsed("worker", "--max-attempts", "2", env=env)
    assert (
        args.concurrency,
        args.queues,
        args.max_attempts,
        args.backoff_ms,
        args.imports,
        args.claim_idle_ms,
        args.log_level,
    ) == (
        3,
        ("default", "low_priority"),
        2,
        250,
        ("json", "api.dev.demo_handlers"),
        60_000,
        "WARNING",
    )  # a blank variable is unset
    assert args.env_sources["queues"] == "LEDGER_QUEUES"
    assert parsed("worker", "--import", "a", "--import", "b,c", env=env).imports == ("a", "b", "c")
    serve = parsed(
        "serve",
        "--rate-per-s",
        "5",
        env={"LEDGER_RATE_PER_S": "abc", "LEDGER_RATE_BURST": "9", "LEDGER_PORT": "8123"},
    )
    assert (serve.rate_per_s, serve.rate_burst, serve.port) == (5.0, 9, 8123)


def test_settings_from_env_names_the_variable_and_hides_keys() -> None:
    assert Settings.from_env(
        {
            "REDIS_URL": "redis://h:1/0",
            "LEDGER_RATE_PER_S": "0.5",
            "LEDGER_API_KEYS": f"{SECRET}:reader",
        }
    ).api_keys == {SECRET: "reader"}
    for name, value in (
        ("LEDGER_RATE_PER_S", "inf"),
        ("LEDGER_PARTITIONS", "2000"),
        ("LEDGER_API_KEYS", f"{SECRET}:god"),
        ("MONGO_URL", "http://x"),
    ):
        with pytest.raises(EnvError) as refused:
            Settings.from_env({name: value})
        assert str(refused.value).startswith(f"{name}: ") and SECRET not in str(refused.value)
    # the commands other than serve never read the API's own variables
    assert Settings.from_env({"LEDGER_API_KEYS": "bad"}, server=False).api_keys == {}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://a:1,b", "seed 'b' is not host:port"),
        ("redis+cluster://a:1,:5", "seed ':5' is not host:port"),
        ("redis+cluster://a:1,b:99999", "seed 'b:99999' is not host:port"),
        ("redis+cluster://a:1,b:x", "seed 'b:x' is not host:port"),
        ("redis+cluster://,b:2", "is not a valid Redis URL"),
    ],
)
def test_a_bad_cluster_seed_list_is_named(url: str, message: str) -> None:
    with pytest.raises(EnvError, match=message):
        env_value({"REDIS_URL": url}, "REDIS_URL", redis_url_option, None)


def test_cluster_seeds_split_with_credentials_and_options() -> None:
    assert cluster_seeds("redis+cluster://u:p@a:1,b:2,[::1]:3/0?ssl=false") == (
        "redis://u:p@a:1/0?ssl=false",
        [("b", 2), ("::1", 3)],
    )
