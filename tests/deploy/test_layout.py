"""The deployment layout: ``docker-compose config`` validates deploy/docker-compose.yml
(Debian's docker-compose 1.29 needs no daemon for that), it holds the services and the
Redis settings docs/operations.md promises, the variables handed to the ledger processes
in compose and in the systemd environment file are ones the ledger reads, and every
process a unit or a service starts is a real ``ledger`` command."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from .tools import COMPOSE, DEPLOY, ROOT, run, tool

SECRETS = {
    "REDIS_PASSWORD": "a-redis-password",
    "LEDGER_API_KEYS": "an-admin-key-0123456789:admin",
    "GRAFANA_ADMIN_PASSWORD": "a-grafana-password",
}
SERVICES = {
    *(f"redis-{n}" for n in range(1, 7)),
    "redis-cluster-init",
    *(f"mongo-{n}" for n in range(1, 4)),
    "mongo-init",
    "api",
    "worker",
    "projector",
    "scheduler",
    "redis-exporter",
    "prometheus",
    "grafana",
}
LEDGER_SERVICES = {
    "api": "serve",
    "worker": "worker",
    "projector": "project",
    "scheduler": "scheduler",
}
UNITS = {
    "ledger-api.service": "serve",
    "ledger-worker@.service": "worker",
    "ledger-project@.service": "project",
    "ledger-scheduler@.service": "scheduler",
}


def compose(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """``docker-compose -f deploy/docker-compose.yml <args>`` with an env file of our own
    (a deploy/.env an operator left must not change the result); its stdout."""
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in (SECRETS if env is None else env).items()))
    done = run(
        [tool("docker-compose"), "--env-file", str(env_file), "-f", str(COMPOSE), *args],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_compose_file_is_valid_and_complete(tmp_path: Path) -> None:
    config = compose(tmp_path, "config")
    services = set(compose(tmp_path, "config", "--services").split())
    assert services == SERVICES | {"ledger-cli"}  # the CLI only in the "tools" profile
    assert re.search(r"\n  ledger-cli:\n(    .*\n)*    profiles:\n    - tools\n", config)
    # Redis: a cluster node with AOF fsynced on every write and no eviction
    words = " ".join(config.split())  # long command lines come out folded
    for flag in (
        "--cluster-enabled yes",
        "--appendonly yes",
        "--appendfsync always",
        "--maxmemory-policy noeviction",
        "--lazyfree-lazy-expire yes",
    ):
        assert flag in words, flag
    assert "--cluster-replicas 1" in words and "replSet" in words
    assert "redis+cluster://:a-redis-password@" in config
    assert "w=majority" in config and "LEDGER_WAIT_REPLICAS: '1'" in config
    # every file the containers mount is in the repository
    for mounted in ("prometheus", "grafana/provisioning", "grafana/ledger.json"):
        assert (DEPLOY / mounted).exists(), mounted
        assert str(DEPLOY / mounted) in config, mounted


def test_compose_refuses_to_start_without_its_secrets(tmp_path: Path) -> None:
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    done = run(
        [tool("docker-compose"), "--env-file", str(env_file), "-f", str(COMPOSE), "config"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode != 0
    assert "set REDIS_PASSWORD" in done.stderr or "set LEDGER_API_KEYS" in done.stderr


def ledger_variables() -> set[str]:
    """Every environment variable the ledger's code names."""
    names: set[str] = set()
    for package in ("api", "streams", "projections"):
        for source in (ROOT / package).rglob("*.py"):
            names |= set(
                re.findall(
                    r"\b(?:LEDGER_[A-Z_]+|REDIS_URL|MONGO_URL|MONGO_DB)\b", source.read_text()
                )
            )
    return names


def test_variables_given_to_the_ledger_are_ones_it_reads(tmp_path: Path) -> None:
    known = ledger_variables()
    assert {"REDIS_URL", "MONGO_URL", "LEDGER_API_KEYS", "LEDGER_WAIT_REPLICAS"} <= known
    config = compose(tmp_path, "config")
    given = set(re.findall(r"^\s+((?:LEDGER|REDIS|MONGO)_[A-Z_]+): ", config, flags=re.M))
    # the Redis containers' and the exporter's own
    given = {v for v in given if v not in ("REDIS_PASSWORD", "REDIS_MAXMEMORY")}
    given = {v for v in given if not v.startswith("REDIS_EXPORTER_")}
    assert given, "no ledger variables found in the compose file"
    assert given <= known, f"compose sets variables the ledger does not read: {given - known}"
    env_example = (DEPLOY / "systemd" / "ledger.env.example").read_text()
    in_file = set(re.findall(r"^#?([A-Z_]+)=", env_example, flags=re.M))
    assert in_file <= known, f"ledger.env.example names unknown variables: {in_file - known}"
    compose_example = (DEPLOY / "env.example").read_text()
    assert set(SECRETS) <= set(re.findall(r"^([A-Z_]+)=", compose_example, flags=re.M))


@pytest.mark.slow  # one `python -m api <command> --help` per process kind
def test_every_process_is_a_real_ledger_command(tmp_path: Path) -> None:
    config = compose(tmp_path, "config")
    for service, command in LEDGER_SERVICES.items():
        block = re.split(r"\n  (?=\S)", config.split(f"\n  {service}:\n", 1)[1], maxsplit=1)[0]
        assert re.search(rf"    command:\n    - {command}\n", block), service
    for unit, command in UNITS.items():
        text = (DEPLOY / "systemd" / unit).read_text()
        start = re.search(r"^ExecStart=/opt/ledger/venv/bin/ledger (\w+)(.*)$", text, flags=re.M)
        assert start is not None and start.group(1) == command, unit
        flags = re.findall(r"--[a-z-]+", start.group(2))
        helped = run([sys.executable, "-m", "api", command, "--help"], cwd=ROOT)
        assert helped.returncode == 0, helped.stderr
        for flag in flags:
            assert flag in helped.stdout, f"{unit}: ledger {command} has no {flag}"
        assert "EnvironmentFile=/etc/ledger/ledger.env" in text
        assert "WantedBy=ledger.target" in text


def test_systemd_units_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts every unit (with the ledger script of this
    virtualenv standing in for /opt/ledger's), and says nothing about them."""
    analyze = tool("systemd-analyze")
    ledger = Path(sys.executable).parent / "ledger"
    assert ledger.exists(), ledger
    names = []
    for unit in sorted((DEPLOY / "systemd").glob("ledger*")):
        if unit.suffix not in (".service", ".target"):
            continue
        text = unit.read_text().replace("/opt/ledger/venv/bin/ledger", str(ledger))
        name = unit.name.replace("@.service", "@9401.service")  # an instance of a template
        (tmp_path / name).write_text(text)
        names.append(name)
    assert len(names) == len(UNITS) + 1
    done = run([analyze, "verify", "--man=no", *(f"./{n}" for n in names)], cwd=tmp_path)
    assert done.returncode == 0 and not done.stderr.strip(), done.stdout + done.stderr
