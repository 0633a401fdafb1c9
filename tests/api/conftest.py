"""An app per test on the session's real servers, through Starlette's TestClient."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis as redis_py
from pymongo.database import Database
from starlette.testclient import TestClient

from api.http.app import create_app
from api.settings import Settings
from ledger.tasks import allowed_collections
from projections.store import MongoDBManager
from streams import HandlerRegistry, QueueManager, StreamsConfig

PARTITIONS = 4
KEYS = {
    "reader-key-0123456789": "reader",
    "producer-key-0123456789": "producer",
    "admin-key-0123456789abc": "admin",
}
MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(
    redis: redis_py.Redis, redis_url: str, mongo_url: str, mongo_db: Database[Any]
) -> Iterator[MakeClient]:
    """``make_client(**settings)`` -> a started TestClient (closed at teardown).

    Settings default to the session servers, a fresh database and the three
    keys in ``KEYS``; pass ``api_keys={}`` for an app without auth.
    """
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        options: dict[str, Any] = dict(
            redis_url=redis_url,
            mongo_url=mongo_url,
            mongo_db=mongo_db.name,
            partitions=PARTITIONS,
            api_keys=KEYS,
        )
        options.update(overrides)
        client = TestClient(create_app(Settings(**options)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def auth(role: str) -> dict[str, str]:
    """Headers with the test key of ``role``."""
    key = next(k for k, r in KEYS.items() if r == role)
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def api_registry() -> HandlerRegistry:
    """The handlers of ``qm``'s workers (a registry of its own: modules other tests
    import register into the global one); a test module overrides it to add some."""
    return HandlerRegistry()


@pytest.fixture
def qm(
    redis: redis_py.Redis, redis_url: str, mongo_db: Database[Any], api_registry: HandlerRegistry
) -> Iterator[QueueManager]:
    """A QueueManager on the app's servers and database, for workers and checks."""
    manager = QueueManager(
        config=StreamsConfig(redis_url=redis_url, partitions=PARTITIONS),
        db=MongoDBManager(mongo_db, allowed_collections()),
        registry=api_registry,
    )
    try:
        yield manager
    finally:
        manager.close()
