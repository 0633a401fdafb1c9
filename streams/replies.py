"""Redis replies as this project's clients return them: bytes, never decoded text.

redis-py types a reply for every client configuration (``bytes | str``, lists
that may be ``None``); the clients made by ``connection.connect`` never decode
responses, so these helpers state that once instead of at every call.
"""

from __future__ import annotations

from typing import cast

from .connection import RedisClient

Fields = dict[bytes, bytes]
"""A stream entry's fields."""

Entry = tuple[bytes, Fields]
"""A stream entry: its id and its fields."""


def text(value: object) -> str:
    """A reply value as text (bytes from our clients; str from a decoding one)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def entries(
    client: RedisClient, stream: str, *, min: str = "-", max: str = "+", count: int | None = None
) -> list[Entry]:
    """``XRANGE`` of ``stream`` (empty when it does not exist)."""
    return cast(list[Entry], client.xrange(stream, min=min, max=max, count=count) or [])


__all__ = ["Entry", "Fields", "entries", "text"]
