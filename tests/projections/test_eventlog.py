"""The log as auditors see it: the archive joined with the (possibly trimmed) streams."""

from __future__ import annotations

from typing import Any

from pymongo.database import Database

from projections.archive import archive_document
from projections.eventlog import (
    LogSources,
    iter_archive,
    read_log,
    read_sources,
    read_tail,
)
from projections.projection import Recorded
from streams import QueueManager
from streams.codec import event_fields
from streams.ids import format_id, parse_id
from streams.replies import entries as stream_entries
from streams.replies import text
from tests.streamlog import account_histories, xadd_fields

from .conftest import PARTITIONS, all_streams, project, traffic, trim_half


def versions(log: dict[str, Any]) -> dict[str, list[int]]:
    return {u: [e.event.version for e in events] for u, events in log.items()}


def test_unarchived_log_is_the_streams(qm: QueueManager, mongo_db: Database[Any]) -> None:
    traffic(qm, users=3, events=25)
    qm.enqueue("default", "noop", {"x": 1})  # a task entry is not an event
    log = read_log(qm.redis, PARTITIONS, mongo_db)
    streams_only = account_histories(qm.redis, PARTITIONS)
    assert {u: [e.event for e in events] for u, events in log.items()} == streams_only
    for events in log.values():
        assert [e.event.version for e in events] == list(range(1, len(events) + 1))
        assert all(e.stream is not None and e.archived is None for e in events)


def test_archived_events_carry_both_copies_at_one_position(
    qm: QueueManager, mongo_db: Database[Any]
) -> None:
    traffic(qm, users=3, events=25)
    project(qm, mongo_db)
    log = read_log(qm.redis, PARTITIONS, mongo_db)
    every = [e for events in log.values() for e in events]
    assert len(every) == mongo_db.events.count_documents({})
    for e in every:
        assert e.stream is not None and e.archived is not None
        assert e.archived.event == e.stream.event == e.event
        assert e.position == e.archived.position == (e.stream.stream, e.stream.entry_id)
        assert e.id == e.archived.doc_id


def test_trimmed_log_reads_the_archive(qm: QueueManager, mongo_db: Database[Any]) -> None:
    traffic(qm, users=3, events=40)
    project(qm, mongo_db)
    before = read_log(qm.redis, PARTITIONS, mongo_db)
    removed = trim_half(qm.redis)
    assert removed > 10
    sources = read_sources(qm.redis, PARTITIONS, mongo_db)
    after = sources.log()
    assert versions(after) == versions(before)
    assert {u: [e.event for e in v] for u, v in after.items()} == {
        u: [e.event for e in v] for u, v in before.items()
    }
    archive_only = [e for v in after.values() for e in v if e.stream is None]
    assert len(archive_only) == removed
    for e in archive_only:
        assert e.position is not None
        stream, entry = e.position
        extent = sources.streams[stream]
        assert extent.trimmed(entry) and not extent.deleted(entry)


def test_a_deleted_middle_entry_is_told_from_a_trimmed_one(
    qm: QueueManager, mongo_db: Database[Any]
) -> None:
    traffic(qm, users=2, events=40)
    project(qm, mongo_db)
    stream = max(all_streams(), key=qm.redis.xlen)
    ids = [eid.decode() for eid, _ in stream_entries(qm.redis, stream)]
    assert len(ids) >= 4
    qm.redis.xtrim(stream, minid=ids[1], approximate=False)  # ids[0] trimmed
    qm.redis.xdel(stream, ids[2])  # ids[2] deleted from the middle
    extent = read_sources(qm.redis, PARTITIONS, mongo_db).streams[stream]
    assert extent.first_id == ids[1] and extent.last_read == ids[-1]
    assert extent.trimmed(ids[0]) and not extent.deleted(ids[0])
    assert extent.deleted(ids[2]) and not extent.trimmed(ids[2])
    assert not extent.deleted(ids[3]) and not extent.deleted(ids[1])
    # an id newer than anything read is not "deleted": it may simply be newer than the read
    ms, seq = parse_id(ids[-1])
    assert not extent.deleted(format_id((ms + 1000, seq)))


def test_requeued_copies_and_tasks_are_skipped(qm: QueueManager, mongo_db: Database[Any]) -> None:
    qm.register_user("r", "r@example.com")
    appended = qm.purchase("r", 10, "t1")
    event = read_log(qm.redis, PARTITIONS, mongo_db)["r"][-1]
    assert event.stream is not None
    # what requeue.lua writes back: the entry's own fields plus rq=<stream>/<id>
    copy = {
        **event_fields(event.event, "default"),
        "rq": f"{event.stream.stream}/{event.stream.entry_id}",
    }
    copy_id = text(qm.redis.xadd(event.stream.stream, xadd_fields(copy)))
    qm.enqueue("default", "noop", {"x": 1})
    sources = read_sources(qm.redis, PARTITIONS, mongo_db)
    log = sources.log()
    assert versions(log) == {"r": [1, 2]}
    assert log["r"][-1].id == appended.event_id
    assert sources.stream_copies[appended.event_id][0].entry_id == event.stream.entry_id
    assert sources.requeued == {appended.event_id: {(event.stream.stream, copy_id)}}
    assert sources.undecodable == []


def test_paging_reads_everything(qm: QueueManager, mongo_db: Database[Any]) -> None:
    traffic(qm, users=3, events=30)
    project(qm, mongo_db)
    trim_half(qm.redis)
    small = read_log(qm.redis, PARTITIONS, mongo_db, page=3)
    big = read_log(qm.redis, PARTITIONS, mongo_db, page=1000)
    assert small == big
    assert len(list(iter_archive(mongo_db, page=4))) == mongo_db.events.count_documents({})


def test_one_account(qm: QueueManager, mongo_db: Database[Any]) -> None:
    names = traffic(qm, users=4, events=30)
    project(qm, mongo_db)
    trim_half(qm.redis)
    everything = read_log(qm.redis, PARTITIONS, mongo_db)
    for name in names:
        assert read_log(qm.redis, PARTITIONS, mongo_db, user=name) == {name: everything[name]}
    assert read_log(qm.redis, PARTITIONS, mongo_db, user="nobody") == {}


def test_documents_that_do_not_decode_are_reported(
    qm: QueueManager, mongo_db: Database[Any]
) -> None:
    qm.register_user("d", "d@example.com")
    project(qm, mongo_db)
    oid = mongo_db.events.insert_one({"note": "not an event"}).inserted_id  # not a string
    mongo_db.events.update_one({"_id": "d:1"}, {"$set": {"version": "one"}})
    sources = read_sources(qm.redis, PARTITIONS, mongo_db)
    assert sorted(u.where for u in sources.undecodable) == sorted(["events/d:1", f"events/{oid}"])
    log = sources.log()
    assert log["d"][0].archived is None and log["d"][0].stream is not None


def test_tail_holds_only_what_came_after(qm: QueueManager, mongo_db: Database[Any]) -> None:
    names = traffic(qm, users=3, events=20)
    project(qm, mongo_db)
    first: LogSources = read_sources(qm.redis, PARTITIONS, mongo_db)
    assert read_tail(qm.redis, PARTITIONS, mongo_db, first) == {}
    qm.purchase(names[0], 5, "tail-1")
    qm.register_user("late", "late@example.com")
    tail = read_tail(qm.redis, PARTITIONS, mongo_db, first)
    assert versions(tail) == {names[0]: [len(first.log()[names[0]]) + 1], "late": [1]}


def test_tail_finds_events_trimmed_before_it_was_read(
    qm: QueueManager, mongo_db: Database[Any]
) -> None:
    traffic(qm, users=2, events=10)
    project(qm, mongo_db)
    first = read_sources(qm.redis, PARTITIONS, mongo_db)
    qm.register_user("gone", "gone@example.com")
    qm.purchase("gone", 7, "g-1")
    project(qm, mongo_db)
    for stream in all_streams():  # everything archived, then every stream trimmed empty
        last = qm.redis.xrevrange(stream, count=1)
        if last:
            ms, seq = parse_id(text(last[0][0]))
            qm.redis.xtrim(stream, minid=format_id((ms, seq + 1)), approximate=False)
            assert qm.redis.xlen(stream) == 0
    tail = read_tail(qm.redis, PARTITIONS, mongo_db, first)
    assert versions(tail) == {"gone": [1, 2]}
    assert all(e.stream is None and e.archived is not None for e in tail["gone"])


def test_archive_document_round_trip(qm: QueueManager, mongo_db: Database[Any]) -> None:
    qm.register_user("x", "x@example.com")
    qm.purchase("x", 3, "x-1", currency="EUR")
    project(qm, mongo_db)
    for e in read_log(qm.redis, PARTITIONS, mongo_db)["x"]:
        assert e.archived is not None and e.stream is not None
        rec = Recorded(stream=e.stream.stream, entry_id=e.stream.entry_id, event=e.event)
        assert archive_document(rec) == dict(e.archived.document)
