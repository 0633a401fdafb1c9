"""Waiting for a condition, once for the whole suite.

Tests that wait for another thread or process (a projector catching up, a
server starting) poll with ``eventually`` rather than a fixed sleep: a fixed
sleep is either too short on a loaded machine (a flaky test) or too long on an
idle one (a slow suite), and a hand-written deadline loop is easy to get
subtly wrong (no last check, no message saying what was seen).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx2 as httpx
import pytest

T = TypeVar("T")

TIMEOUT_S = 30.0
INTERVAL_S = 0.05


def eventually(
    check: Callable[[], T],
    *,
    timeout: float = TIMEOUT_S,
    interval: float = INTERVAL_S,
    message: str | Callable[[], str] = "condition not reached",
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """Call ``check`` until it returns a truthy value, and return that value.

    ``check`` is a predicate (``lambda: doc_count() == 3``), a probe whose
    value the test wants (``lambda: coll.find_one(q)``) or a function that
    asserts and then returns ``True``. An ``AssertionError`` it raises, and any
    exception in ``ignoring`` (e.g. ``OSError`` while a server starts), means
    "not yet"; any other exception, and ``pytest.fail`` (for "this will never
    happen", e.g. the process under test exited), propagates at once. Past
    ``timeout`` seconds the test fails with ``message`` (or what it returns,
    called then: e.g. a log's tail), the last value seen and, chained, the
    last error.
    """
    not_yet: tuple[type[Exception], ...] = (AssertionError, *ignoring)
    deadline = time.monotonic() + timeout
    while True:
        error: Exception | None = None
        last: object = None
        try:
            value = check()
        except not_yet as exc:
            error = exc
        else:
            if value:
                return value
            last = value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            seen = f"last error: {error!r}" if error is not None else f"last value: {last!r}"
            hint = (
                "; a check that asserts must return True" if error is None and last is None else ""
            )
            text = message() if callable(message) else message
            raise AssertionError(f"{text} (waited {timeout:g}s; {seen}{hint})") from error
        time.sleep(min(interval, remaining))


def serving(base_url: str, proc: subprocess.Popen[Any], output: Callable[[], object] = str) -> bool:
    """For ``eventually``: True once ``GET /health`` of the server ``proc`` runs answers
    200; fails at once, with what ``output()`` gives (its log), if the process exited."""
    if proc.poll() is not None:
        pytest.fail(f"the server exited with {proc.returncode} before it served: {output()}")
    try:
        return httpx.get(f"{base_url}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
