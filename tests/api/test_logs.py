"""Structured JSON logs and the request id."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from api import jsonlog as logs

from .test_metrics import instrumented

__all__ = ["instrumented"]


@pytest.fixture
def access_lines() -> Iterator[io.StringIO]:
    """What ``api.access`` writes, as JSON lines."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("api.access")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def test_a_given_request_id_is_returned_and_logged(
    instrumented: TestClient, access_lines: io.StringIO
) -> None:
    response = instrumented.get("/health", headers={"X-Request-ID": "req-42.a"})
    assert response.headers["x-request-id"] == "req-42.a"
    [line] = [json.loads(x) for x in access_lines.getvalue().splitlines()]
    assert line["request_id"] == "req-42.a"
    assert (line["logger"], line["level"], line["method"], line["path"], line["status"]) == (
        "api.access",
        "INFO",
        "GET",
        "/health",
        200,
    )
    assert line["msg"] == "GET /health 200"
    assert line["ts"].endswith("Z") and isinstance(line["duration_ms"], float)


@pytest.mark.parametrize("given", [None, "", "has space", "x" * 129, "new\\nline", "<script>"])
def test_a_missing_or_odd_request_id_is_replaced(
    instrumented: TestClient, access_lines: io.StringIO, given: str | None
) -> None:
    headers = {} if given is None else {"X-Request-ID": given}
    response = instrumented.get("/no/such/page", headers=headers)
    made = response.headers["x-request-id"]
    assert made != given and len(made) == 32 and int(made, 16) >= 0
    [line] = [json.loads(x) for x in access_lines.getvalue().splitlines()]
    assert (line["request_id"], line["status"]) == (made, 404)


def test_each_request_gets_its_own_id(instrumented: TestClient) -> None:
    ids = {instrumented.get("/health").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


def test_formatter_writes_one_json_object_with_context_and_extras() -> None:
    formatter = logs.JsonFormatter()
    logger = logging.getLogger("test.logs")
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(formatter.format(record))

    keep = Keep()
    logger.addHandler(keep)
    logger.setLevel(logging.DEBUG)
    try:
        with logs.bind(event_id="ann:3", task_id="t-9"):
            logger.warning("applied %s\nnext line", "x", extra={"attempts": 2, "obj": object()})
        try:
            raise ValueError("bad")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(keep)
    first, second = lines
    assert "\n" not in first and "\n" not in second
    one, two = json.loads(first), json.loads(second)
    assert (one["level"], one["logger"], one["msg"]) == (
        "WARNING",
        "test.logs",
        "applied x\nnext line",
    )
    assert (one["event_id"], one["task_id"], one["attempts"]) == ("ann:3", "t-9", 2)
    assert one["obj"].startswith("<object object")
    assert "event_id" not in two and "ValueError: bad" in two["exc"]


def test_configure_sends_json_lines_from_every_logger() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    uvicorn_loggers = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "uvicorn.access")]
    uvicorn_saved = [(lg.level, lg.propagate, list(lg.handlers)) for lg in uvicorn_loggers]
    for lg in uvicorn_loggers:  # as uvicorn.run leaves them
        lg.setLevel(logging.WARNING)
        lg.propagate = False
    stream = io.StringIO()
    try:
        logs.configure("DEBUG", stream=stream)
        logging.getLogger("streams.worker").info("round done")
        logging.getLogger("uvicorn.error").info("started")
        logging.getLogger("uvicorn.access").info("swallowed: api.access says it")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for lg, (level, propagate, handlers) in zip(uvicorn_loggers, uvicorn_saved, strict=True):
            lg.setLevel(level)
            lg.propagate = propagate
            lg.handlers[:] = handlers
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert [(x["logger"], x["msg"]) for x in lines] == [
        ("streams.worker", "round done"),
        ("uvicorn.error", "started"),
    ]
