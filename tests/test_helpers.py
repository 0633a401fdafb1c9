"""The suite's own waiting helper: it returns what it waited for, and fails saying what it saw."""

from __future__ import annotations

import itertools

import pytest

from tests.helpers import eventually


def test_returns_the_first_truthy_value() -> None:
    calls = itertools.count()
    assert eventually(lambda: next(calls) >= 3 and "ready", interval=0) == "ready"


def test_an_assertion_means_not_yet() -> None:
    calls = itertools.count()

    def check() -> bool:
        assert next(calls) >= 2, "not yet"
        return True

    assert eventually(check, interval=0) is True


def test_fails_with_the_message_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"never ready \(waited 0\.1s; last value: 0\)"):
        eventually(lambda: 0, timeout=0.1, interval=0.01, message="never ready")


def test_fails_with_the_last_assertion_chained() -> None:
    def check() -> bool:
        raise AssertionError("balance 40 != 50")

    with pytest.raises(AssertionError, match="balance 40 != 50") as info:
        eventually(check, timeout=0.1, interval=0.01)
    assert isinstance(info.value.__cause__, AssertionError)


def test_a_check_that_returns_none_is_told_to_return_true() -> None:
    with pytest.raises(AssertionError, match="must return True"):
        eventually(lambda: None, timeout=0.05, interval=0.01)


def test_other_errors_propagate_unless_ignored() -> None:
    def refuse() -> bool:
        raise ConnectionRefusedError

    with pytest.raises(ConnectionRefusedError):
        eventually(refuse, timeout=5)
    with pytest.raises(AssertionError, match="ConnectionRefusedError"):
        eventually(refuse, timeout=0.05, interval=0.01, ignoring=(OSError,))


def test_a_callable_message_is_called_at_the_timeout() -> None:
    log = ["starting"]

    def grow() -> bool:
        log.append("still starting")
        return False

    with pytest.raises(AssertionError, match="starting, still starting"):
        eventually(grow, timeout=0.05, interval=0.01, message=lambda: ", ".join(log))
