"""Errors of the stream engine.

    StreamsError
    ├── Unavailable      Redis could not be reached or answered with an error   -> 503
    ├── DecodeError      an entry that is not a valid event or task (keeps the raw fields)
    └── ConfigError      the deployment disagrees with itself (e.g. partition count)
    Retry                raised by a handler to ask for another attempt (control flow)
"""

from __future__ import annotations

from collections.abc import Mapping


class StreamsError(Exception):
    """Root of the stream engine's errors."""


class Unavailable(StreamsError):
    """Redis is down, unreachable or refused the command."""


class DecodeError(StreamsError):
    """A stream entry that can't be turned into an event or a task."""

    def __init__(self, message: str, raw: Mapping[bytes, bytes]) -> None:
        super().__init__(message)
        self.raw = dict(raw)


class ConfigError(StreamsError):
    """Settings that would corrupt data if used (refused at start-up)."""


class Retry(Exception):
    """Raised by a handler: try again, after ``delay_ms`` if given."""

    def __init__(self, delay_ms: int | None = None) -> None:
        super().__init__(f"retry requested (delay_ms={delay_ms})")
        self.delay_ms = delay_ms


class UnknownDeadLetter(StreamsError):
    """No dead letter with that id (never existed, or already requeued)."""

    code = "unknown_dead_letter"
