"""An outside check of the HTTP contract: schemathesis (its CLI, as a user runs it)
against ``/openapi.json`` of a real ``ledger serve``, with API keys and without.

Every check schemathesis has (they are all on by default: no 5xx, status codes,
content types, headers and bodies that the document declares, negative data
refused, schema-valid data accepted, authentication enforced as declared, …), on every
operation, examples and coverage phases then generated cases (``--max-examples``
per operation, fixed seed so a failure reproduces), and stateful links where the
document declares them. A finding fails the test with schemathesis' own report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
from pymongo.database import Database

from api.dev.deployment import Deployment
from api.dev.embedded import free_port
from tests.helpers import eventually, serving

from .conftest import KEYS, PARTITIONS

pytestmark = pytest.mark.slow  # a real server and a few thousand requests

ROOT = Path(__file__).resolve().parents[2]
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
MAX_EXAMPLES = 25
SEED = 20261202
ADMIN = next(k for k, r in KEYS.items() if r == "admin")


@pytest.fixture(params=["keys", "no-keys"])
def served(
    request: pytest.FixtureRequest,
    redis: redis_py.Redis,
    redis_url: str,
    mongo_url: str,
    mongo_db: Database[Any],
    tmp_path: Path,
) -> Iterator[tuple[str, dict[str, str]]]:
    """(base URL, headers every request carries): ``ledger serve`` with the test
    keys (and an admin key sent, so every role's operation is reached), or with
    none (every caller is admin); no rate limit."""
    keys = request.param == "keys"
    deployment = Deployment(
        redis_url,
        mongo_url,
        mongo_db=mongo_db.name,
        partitions=PARTITIONS,
        log_level="WARNING",
        env={"LEDGER_API_KEYS": ",".join(f"{k}:{r}" for k, r in KEYS.items()) if keys else ""},
        cwd=ROOT,
        log_dir=tmp_path,
    )
    try:
        port = free_port()
        proc = deployment.start("api", "serve", "--port", str(port), "--rate-per-s", "0")
        base = f"http://127.0.0.1:{port}"
        eventually(
            lambda: serving(base, proc, (tmp_path / "api.log").read_text),
            timeout=60,
            message="the server did not start",
        )
        yield base, ({"Authorization": f"Bearer {ADMIN}"} if keys else {})
    finally:
        deployment.stop(30)


def test_schemathesis_finds_nothing(served: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    base, headers = served
    assert SCHEMATHESIS.exists(), "schemathesis is a dev dependency (pip install -e '.[dev]')"
    cmd = [
        str(SCHEMATHESIS),
        "--no-color",
        "--config-file",
        str(Path(__file__).with_name("schemathesis.toml")),
        "run",
        f"{base}/openapi.json",
        # its coverage phase fails inside schemathesis 4.32 on Python 3.11 ("AST
        # constructor recursion depth mismatch"), before any request: left out
        "--phases",
        "examples,fuzzing,stateful",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "2",
        "--report-dir",
        str(tmp_path / "report"),
        *(arg for name, value in headers.items() for arg in ("--header", f"{name}: {value}")),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the hooks module: tests.api.…
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert run.returncode == 0, f"{' '.join(cmd)}\n{run.stdout[-12000:]}\n{run.stderr[-3000:]}"
