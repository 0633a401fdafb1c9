"""Consumer-group inspection (``streams.groups``), and what status and retention
make of a Redis that is not there: an error the caller reports (503), never
zeros or "nothing to trim"."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis as redis_py

from api.dev.embedded import EmbeddedRedis
from streams import StreamsConfig, keys
from streams.errors import Unavailable
from streams.groups import GroupInfo, acked_below, groups
from streams.replies import text
from streams.retention import trim, trim_point
from streams.status import queue_stats, task_status
from tests.conftest import MakeRedisServer

STREAM = keys.stream(keys.partitions(2)[0], keys.LEVEL_BY_NAME["normal"])


@pytest.fixture
def server(fresh_redis_server: MakeRedisServer) -> EmbeddedRedis:
    return fresh_redis_server(appendonly=False)


@pytest.fixture
def client(server: EmbeddedRedis) -> Iterator[redis_py.Redis]:
    with redis_py.Redis.from_url(server.url, socket_connect_timeout=1, socket_timeout=1) as c:
        yield c


def test_groups_of_a_missing_stream_are_none(client: redis_py.Redis) -> None:
    assert groups(client, STREAM) == {}
    assert trim_point(client, STREAM, required=()) is None


def test_groups_report_pending_and_the_acknowledged_mark(client: redis_py.Redis) -> None:
    ids = [text(client.xadd(STREAM, {"n": str(i)})) for i in range(3)]
    client.xgroup_create(STREAM, "g", id="0")
    client.xgroup_create(STREAM, "idle", id="$")
    client.xreadgroup("g", "c1", {STREAM: ">"}, count=2)
    client.xack(STREAM, "g", ids[0])

    found = groups(client, STREAM)
    g, idle = found["g"], found["idle"]
    assert (g.name, g.consumers, g.pending) == ("g", 1, 1)
    assert g.last_delivered == _id(ids[1])
    assert acked_below(client, STREAM, g) == _id(ids[1])  # its oldest pending entry
    assert (idle.consumers, idle.pending) == (0, 0)
    ms, seq = _id(ids[2])
    assert acked_below(client, STREAM, idle) == (ms, seq + 1)  # after the last delivered
    assert trim_point(client, STREAM, required=("g", "idle")) == _id(ids[1])
    assert trim_point(client, STREAM, required=("g", "other")) is None


def test_a_stopped_redis_is_an_error_not_an_empty_answer(
    server: EmbeddedRedis, client: redis_py.Redis
) -> None:
    client.xadd(STREAM, {"n": "1"})
    client.xgroup_create(STREAM, "g", id="0")
    assert isinstance(groups(client, STREAM)["g"], GroupInfo)
    server.stop()

    with pytest.raises(redis_py.ConnectionError):
        groups(client, STREAM)


def test_queue_stats_of_a_stopped_redis_raise_unavailable(
    server: EmbeddedRedis, client: redis_py.Redis
) -> None:
    config = StreamsConfig(redis_url=server.url, partitions=2)
    assert queue_stats(client, config, queue_name="default")["default"]["pending"] == 0
    server.stop()

    with pytest.raises(Unavailable):
        queue_stats(client, config, queue_name="default")
    with pytest.raises(Unavailable):
        task_status(client, 2, "some-task")


def test_retention_of_a_stopped_redis_raises_unavailable(
    server: EmbeddedRedis, client: redis_py.Redis
) -> None:
    stream = keys.stream(keys.partitions(2)[0], keys.LEVELS_DESC[0])
    client.xadd(stream, {"n": "1"})
    client.xgroup_create(stream, "g", id="$")
    assert trim_point(client, stream, required=("g",)) is not None
    server.stop()

    with pytest.raises(Unavailable):
        trim_point(client, stream, required=("g",))
    with pytest.raises(Unavailable):
        trim(client, 1, keep_ms=0, required=("g",))


def _id(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)
