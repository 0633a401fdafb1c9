"""Event times: milliseconds since the epoch, shown as UTC.

The ledger keeps times as integers (``Event.at_ms``, task timestamps); this
is the one place that turns them into datetimes and ISO 8601 text, in integer
arithmetic so a millisecond never rounds into its neighbour. (``ledger`` stays
free of ``datetime``: it has no clocks.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import overload

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc(at_ms: int) -> datetime:
    """``at_ms`` (ms since the epoch) as an aware UTC datetime."""
    return EPOCH + timedelta(milliseconds=at_ms)


@overload
def iso_utc(at_ms: int) -> str: ...
@overload
def iso_utc(at_ms: None) -> None: ...
@overload
def iso_utc(at_ms: int | None) -> str | None: ...
def iso_utc(at_ms: int | None) -> str | None:
    """``2026-11-28T03:57:58.123Z``; None stays None (a time not recorded)."""
    if at_ms is None:
        return None
    return utc(at_ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")


__all__ = ["EPOCH", "iso_utc", "utc"]
