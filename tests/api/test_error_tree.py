"""One error catalogue: one root, one drawing, one table to HTTP status."""

from __future__ import annotations

import importlib
import inspect

import pytest

import ledger.errors
from api.http.auth import Role
from api.http.errors import STATUS, status_and_code
from api.settings import EnvError
from ledger.errors import Error, InsufficientCredits, LedgerError, VersionGap
from projections.store import DuplicateDocument, StoreUnavailable
from streams.errors import ConfigError, DecodeError, Retry, Unavailable, UnknownDeadLetter

MODULES = (
    "ledger.errors",
    "ledger.tasks",
    "streams.errors",
    "projections.store",
    "api.http.errors",
)


def project_errors() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for name in MODULES:
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == name:
                found.append(cls)
    return found


def test_every_error_has_the_one_root_and_is_drawn_in_the_tree() -> None:
    drawing = ledger.errors.__doc__ or ""
    for cls in project_errors():
        if cls is Retry:  # control flow, not an error
            continue
        assert issubclass(cls, Error), cls
        assert cls.__name__ in drawing, f"{cls.__name__} is missing from ledger.errors' tree"
    assert issubclass(EnvError, ConfigError) and "EnvError" in drawing


def test_domain_refusals_stay_apart_from_outages() -> None:
    for outage in (Unavailable, StoreUnavailable, ConfigError, DecodeError):
        assert issubclass(outage, Error) and not issubclass(outage, LedgerError)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (InsufficientCredits("u", 1, 2), (409, "insufficient_credits")),
        (DuplicateDocument("users", "u"), (409, "duplicate_document")),
        (VersionGap("u", 1, 3), (500, "version_gap")),
        (Unavailable("redis is down"), (503, "unavailable")),
        (StoreUnavailable("mongo is down"), (503, "unavailable")),
        (ConfigError("two partition counts"), (503, "misconfigured")),
        (UnknownDeadLetter("no dead letter 'p0:1-0'"), (404, "unknown_dead_letter")),
        (DecodeError("bad entry", {}), (500, "internal_error")),
    ],
)
def test_the_table_maps_each_class(exc: Error, expected: tuple[int, str]) -> None:
    assert status_and_code(exc) == expected


def test_the_table_holds_only_tree_classes() -> None:
    assert all(issubclass(cls, Error) for cls in STATUS)


def test_roles_are_ordered_scopes() -> None:
    assert Role.READER.scopes == ["reader"]
    assert Role.PRODUCER.scopes == ["reader", "producer"]
    assert Role.ADMIN.scopes == ["reader", "producer", "admin"]
    assert f"{Role.ADMIN}" == "admin"
