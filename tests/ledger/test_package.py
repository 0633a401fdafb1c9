"""The shape of the ``ledger`` package: its public names and its purity."""

from __future__ import annotations

import ast
import sys
import types
from pathlib import Path

import ledger

PACKAGE = Path(ledger.__file__).parent

# Stdlib modules that would bring I/O, clocks, randomness or the environment.
IMPURE = {
    "os",
    "sys",
    "time",
    "datetime",
    "random",
    "secrets",
    "socket",
    "subprocess",
    "io",
    "pathlib",
    "shutil",
    "tempfile",
    "threading",
    "asyncio",
    "logging",
    "uuid",
}


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(ledger).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }
    assert set(ledger.__all__) == public
    assert len(ledger.__all__) == len(set(ledger.__all__))


def test_every_exported_name_resolves() -> None:
    for name in ledger.__all__:
        assert getattr(ledger, name) is not None, name


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_ledger_is_stdlib_only_and_pure() -> None:
    modules = sorted(PACKAGE.glob("*.py"))
    assert modules
    for path in modules:
        imported = imports_of(path) - {"__future__"}
        third_party = {n for n in imported if n not in sys.stdlib_module_names}
        assert not third_party, f"{path.name} imports {third_party}"
        impure = imported & IMPURE
        assert not impure, f"{path.name} imports {impure}"
