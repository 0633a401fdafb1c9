"""Fixtures of the fault suite: a private Mongo-wire server per test (the storm kills
and stops servers, so it never touches the session's)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from api.embedded import EmbeddedMongo

PARTITIONS = 4


@pytest.fixture
def private_mongo(tmp_path: Path) -> Iterator[EmbeddedMongo]:
    server = EmbeddedMongo(tmp_path / "mongo")
    server.start()
    try:
        yield server
    finally:
        server.stop()
