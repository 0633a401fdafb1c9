"""Issue 12, what a finished task keeps: a completed task's record becomes one
field of a done bucket (``streams.finished``) with the same status answer; its
stream entry is deleted once every group is past it (``streams.prune``); a fresh
delivery writes nothing before it settles and reads as processing meanwhile."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import pytest

from ledger.tasks import Priority
from streams import HandlerRegistry, QueueManager, Scheduler, Worker, finished, keys
from streams.groups import groups
from streams.handlers import DBManager
from streams.replies import entries as stream_entries
from streams.replies import text
from streams.status import STATUS_FIELDS
from tests.helpers import eventually

from .conftest import PARTITIONS

MakeWorker = Callable[..., Worker]


def _part(task_id: str) -> keys.Partition:
    return keys.partition_of(task_id, PARTITIONS)


def _families(qm: QueueManager, p: keys.Partition) -> list[tuple[str, int]]:
    """The partition's families of done buckets and when each may go (ms)."""
    rows = cast(
        list[tuple[bytes, float]], qm.redis.zrange(keys.done_index(p), 0, -1, withscores=True)
    )
    return [(text(name), int(score)) for name, score in rows]


def test_a_completed_task_answers_the_same_status_from_its_compact_record(
    qm: QueueManager, registry: HandlerRegistry, make_worker: MakeWorker
) -> None:
    tries: dict[str, int] = {}

    def flaky(data: Mapping[str, Any], db_manager: DBManager) -> bool:
        tries[data["k"]] = tries.get(data["k"], 0) + 1
        return bool(tries[data["k"]] >= data["ok_at"])

    registry.register("flaky", flaky)
    plain = qm.enqueue("default", "flaky", {"k": "a", "ok_at": 1})
    retried = qm.enqueue("high_priority", "flaky", {"k": "b", "ok_at": 2})
    delayed = qm.enqueue("default", "flaky", {"k": "c", "ok_at": 1}, delay=0.05)
    keyed = qm.enqueue("default", "flaky", {"k": "d", "ok_at": 1}, idempotency_key="k-1")
    time.sleep(0.1)
    assert Scheduler(qm.redis, PARTITIONS).tick() == 1
    make_worker().run_until_idle()

    full = qm.get_task_status(keyed)
    assert full is not None and qm.redis.exists(keys.task(_part(keyed), keyed))
    for task_id, queue, attempts in ((plain, "default", 1), (retried, "high_priority", 2)):
        assert not qm.redis.exists(keys.task(_part(task_id), task_id))
        got = qm.get_task_status(task_id)
        assert got is not None and got.keys() == full.keys()
        assert got["task_id"] == task_id
        assert (got["status"], got["attempts"], got["queue_name"], got["task_type"]) == (
            "completed",
            attempts,
            queue,
            "flaky",
        )
        assert got["enqueued_at"] <= got["started_at"] <= got["finished_at"]
        assert (got["last_error"], got["due_at"], got["retry_at"]) == (None, None, None)
        assert (got["depends_on"], got["waiting_for"]) == ([], [])
    late = qm.get_task_status(delayed)
    assert late is not None and late["status"] == "completed"
    assert late["enqueued_at"] < late["due_at"] <= late["started_at"]


def test_a_fresh_task_shows_processing_while_it_runs_and_writes_nothing_before(
    qm: QueueManager, registry: HandlerRegistry, make_worker: MakeWorker
) -> None:
    seen: list[dict[str, Any] | None] = []
    ids: list[str] = []

    def look(data: Mapping[str, Any], db_manager: DBManager) -> bool:
        seen.append(qm.get_task_status(ids[0]))
        return True

    registry.register("look", look)
    ids.append(qm.enqueue("default", "look", {}))
    assert qm.get_task_status(ids[0])["status"] == "queued"  # type: ignore[index]
    make_worker().run_until_idle()
    during = seen[0]
    assert during is not None
    assert (during["status"], during["attempts"]) == ("processing", 1)
    assert during["started_at"] is not None
    assert qm.redis.hlen(keys.attempts(_part(ids[0]))) == 0  # no attempt counter to forget


def test_entries_are_deleted_only_once_every_group_is_past_them(
    qm: QueueManager, registry: HandlerRegistry, make_worker: MakeWorker
) -> None:
    """Deleting an entry a group has not been given would leave that group's lag
    unknown (Redis 7.0): entries wait for the slowest group."""
    registry.register("ok", lambda data, db: True)
    task_ids = [qm.enqueue("default", "ok", {"n": i}) for i in range(12)]
    streams = {keys.stream(_part(t), Priority.NORMAL) for t in task_ids}
    for stream in streams:
        qm.redis.xgroup_create(stream, "slow", id="0")
    worker = make_worker()
    worker.run_until_idle()
    assert sum(len(stream_entries(qm.redis, s)) for s in streams) == 12  # "slow" needs them
    for stream in streams:
        assert groups(qm.redis, stream)["slow"].lag is not None
        # "slow" is given one entry (pending there), the others not yet
        assert qm.redis.xreadgroup("slow", "c", {stream: ">"}, count=1)
    worker.prune()
    left = sum(len(stream_entries(qm.redis, s)) for s in streams)
    assert left == 12  # each is pending in "slow" or not given to it yet
    for stream in streams:
        qm.redis.xreadgroup("slow", "c", {stream: ">"})
        pending = qm.redis.xpending_range(stream, "slow", min="-", max="+", count=100)
        qm.redis.xack(stream, "slow", *[row["message_id"] for row in pending])
    worker.prune()
    assert sum(len(stream_entries(qm.redis, s)) for s in streams) == 0
    for stream in streams:
        info = groups(qm.redis, stream)
        assert info["slow"].lag == 0 and info["workers"].lag == 0
    assert all(qm.get_task_status(t)["status"] == "completed" for t in task_ids)  # type: ignore[index]


def test_an_event_entry_is_never_deleted(qm: QueueManager, make_worker: MakeWorker) -> None:
    """Only completed tasks' entries go: events are the log."""
    qm.register_user("u1", "u1@example.com")
    qm.purchase("u1", 5, "t-1")
    stream = keys.stream(keys.partition_of("u1", PARTITIONS), Priority.NORMAL)
    worker = make_worker()
    worker.run_until_idle()
    worker.prune()
    assert len(stream_entries(qm.redis, stream)) == 2


def test_done_buckets_go_after_the_retention_and_status_with_them(
    qm: QueueManager, registry: HandlerRegistry, make_worker: MakeWorker
) -> None:
    registry.register("ok", lambda data, db: True)
    task_id = qm.enqueue("default", "ok", {})
    make_worker(status_ttl_s=3600).run_until_idle()
    p = _part(task_id)
    [(family, drop_at)] = _families(qm, p)
    bucket = keys.done_part(family, 0)
    now_ms = int(time.time() * 1000)
    width = finished.width_ms(3600)
    assert now_ms + 3600_000 <= drop_at <= now_ms + 3600_000 + width
    assert 0 < qm.redis.pttl(bucket) <= drop_at + width - now_ms  # the safety net
    assert finished.drop_expired(qm.redis, (p,), now_ms) == 0
    assert qm.get_task_status(task_id) is not None
    assert finished.drop_expired(qm.redis, (p,), int(drop_at)) == 1
    assert not qm.redis.exists(bucket) and qm.redis.zcard(keys.done_index(p)) == 0
    assert qm.get_task_status(task_id) is None


def test_a_status_past_the_retention_is_gone_before_its_bucket_is_dropped(
    qm: QueueManager, registry: HandlerRegistry, make_worker: MakeWorker
) -> None:
    registry.register("ok", lambda data, db: True)
    task_id = qm.enqueue("default", "ok", {})
    make_worker(status_ttl_s=1).run_until_idle()
    assert qm.get_task_status(task_id) is not None
    eventually(lambda: qm.get_task_status(task_id) is None, timeout=5)


@pytest.mark.parametrize(
    "raw",
    [b"", b"1|2|3", b"1.5|0|0|1||q|t", b"1|2|3|4|5|q|t|x", b"|0|0|1||q|t", "1|2|3|!||q|t"],
)
def test_a_bucket_field_settle_did_not_write_is_refused(raw: bytes | str) -> None:
    with pytest.raises(ValueError):
        finished.status_values(raw, STATUS_FIELDS)


def test_a_uuid_is_kept_as_its_16_bytes_and_only_its_own_spelling_finds_it(
    qm: QueueManager, registry: HandlerRegistry, make_worker: MakeWorker
) -> None:
    registry.register("ok", lambda data, db: True)
    task_id = qm.enqueue("default", "ok", {})
    make_worker().run_until_idle()
    [(family, _)] = _families(qm, _part(task_id))
    bucket = keys.done_part(family, 0)
    assert qm.redis.hkeys(bucket) == [bytes.fromhex(task_id.replace("-", ""))]
    assert finished.packed_id(task_id) == bytes.fromhex(task_id.replace("-", ""))
    assert finished.packed_id("not-a-uuid") == b"not-a-uuid"
    assert finished.packed_id(task_id.upper()) == task_id.upper().encode()
    assert qm.get_task_status(task_id.upper()) is None
    assert qm.get_task_status(task_id) is not None


def test_a_family_whose_buckets_fill_up_is_followed_by_one_twice_as_wide(
    qm: QueueManager,
    registry: HandlerRegistry,
    make_worker: MakeWorker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Buckets stay small hashes (listpacks) at any rate: here a family splits once
    one of its buckets holds 3 fields; every status is still found, then all go."""
    monkeypatch.setattr(finished, "SPLIT_AT", 3)
    registry.register("ok", lambda data, db: True)
    task_ids = [qm.enqueue("default", "ok", {"n": i}) for i in range(150)]
    worker = make_worker(status_ttl_s=3600, batch=16)
    worker.run_until_idle()
    scales: list[int] = []
    for p in keys.partitions(PARTITIONS):
        for name, _ in _families(qm, p):
            scale = int(name.rsplit(":", 1)[1])
            scales.append(scale)
            for i in range(scale):
                # each split when a bucket reached 3: at most a round's share more
                assert qm.redis.hlen(keys.done_part(name, i)) <= 3 + 16
    assert max(scales) >= 4 and len(scales) > PARTITIONS
    assert all(qm.get_task_status(t)["status"] == "completed" for t in task_ids)  # type: ignore[index]
    far = int(time.time() * 1000) + 2 * 3600_000
    assert finished.drop_expired(qm.redis, keys.partitions(PARTITIONS), far) == len(scales)
    assert not qm.redis.keys("*:done:*")
    assert all(qm.get_task_status(t) is None for t in task_ids)


def test_scales_double_once_per_report_and_start_over_each_span() -> None:
    scales = finished.Scales()
    p = keys.partitions(PARTITIONS)[0]
    assert scales.scale(p, 10) == 1
    scales.observe(p, 10, 1, finished.SPLIT_AT - 1)
    assert scales.scale(p, 10) == 1
    scales.observe(p, 10, 1, finished.SPLIT_AT)
    assert scales.scale(p, 10) == 2
    scales.observe(p, 10, 1, finished.SPLIT_AT)  # a late report of the old family
    assert scales.scale(p, 10) == 2
    scales.observe(p, 10, 2, finished.SPLIT_AT + 50)
    assert scales.scale(p, 10) == 4
    assert scales.scale(p, 11) == 1  # a new span starts small
    scales.observe(p, 11, finished.MAX_SCALE, finished.SPLIT_AT)
    assert scales.scale(p, 11) == finished.MAX_SCALE
