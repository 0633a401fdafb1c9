"""Errors of the stream engine: the ``StreamsError`` branch of the one tree drawn
in ``ledger.errors`` (whose root, ``Error``, they share with the domain).

``Retry`` is not an error: a handler raises it to ask for another attempt.
"""

from __future__ import annotations

from collections.abc import Mapping

from ledger.errors import Error


class StreamsError(Error):
    """Root of the stream engine's errors."""

    code = "streams_error"


class Unavailable(StreamsError):
    """Redis is down, unreachable or refused the command."""

    code = "unavailable"


class DecodeError(StreamsError):
    """A stream entry that can't be turned into an event or a task."""

    code = "decode_error"

    def __init__(self, message: str, raw: Mapping[bytes, bytes]) -> None:
        super().__init__(message)
        self.raw = dict(raw)


class ConfigError(StreamsError):
    """Settings that would corrupt data if used (refused at start-up)."""

    code = "misconfigured"


class Retry(Exception):
    """Raised by a handler: try again, after ``delay_ms`` if given."""

    def __init__(self, delay_ms: int | None = None) -> None:
        super().__init__(f"retry requested (delay_ms={delay_ms})")
        self.delay_ms = delay_ms


class UnknownDeadLetter(StreamsError):
    """No dead letter with that id (never existed, or already requeued)."""

    code = "unknown_dead_letter"
