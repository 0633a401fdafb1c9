"""Fixtures of the fault suite: a private Mongo-wire server per test (the storm kills
and stops servers, so it never touches the session's). Every test here is marked
``faults``, so ``make test-fast`` leaves the directory out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from api.dev.embedded import EmbeddedMongo
from streams import StreamsConfig

PARTITIONS = 4
CLUSTER_PARTITIONS = StreamsConfig().partitions
"""The storm on a Redis Cluster runs with the default count, whose partitions spread
over the slots (the storm asserts that every master holds some)."""
HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the whole directory ``faults``: a new fault test cannot forget it."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.faults)


@pytest.fixture
def private_mongo(tmp_path: Path) -> Iterator[EmbeddedMongo]:
    server = EmbeddedMongo(tmp_path / "mongo")
    server.start()
    try:
        yield server
    finally:
        server.stop()
