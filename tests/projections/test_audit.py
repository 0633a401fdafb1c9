"""The audit passes a clean (or trimmed, or still-projecting) ledger and names the
account of every changed, missing or reordered event and every edited copy."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pymongo.database import Database

from ledger.chain import link
from projections import audit as A
from projections.audit import AuditReport, audit
from streams import QueueManager, keys
from streams.replies import entries as stream_entries
from streams.replies import text

from .conftest import (
    PARTITIONS,
    Cli,
    entries_of,
    not_first,
    parser,
    project,
    rewrite_stream,
    traffic,
    trim_half,
)


def run_audit(qm: QueueManager, db: Database[Any], user: str | None = None) -> AuditReport:
    return audit(qm.redis, PARTITIONS, db, user=user)


def found(report: AuditReport) -> set[tuple[str, str]]:
    """(account, what) of every mismatch."""
    return {(m.user_id, m.what) for m in report.mismatches}


@pytest.fixture
def ledger(qm: QueueManager, mongo_db: Database[Any]) -> QueueManager:
    """Five accounts with some history, projected; the audit is clean."""
    traffic(qm, users=5, events=60)
    project(qm, mongo_db)
    report = run_audit(qm, mongo_db)
    assert report.ok, report.mismatches
    assert report.lagging == []
    assert report.accounts == 5
    assert report.events == mongo_db.events.count_documents({})
    return qm


def test_clean_ledger_passes_whole_and_per_account(
    ledger: QueueManager, mongo_db: Database[Any]
) -> None:
    total = 0
    for user in ("u0", "u1", "u2", "u3", "u4"):
        report = run_audit(ledger, mongo_db, user)
        assert report.ok and report.accounts == 1
        total += report.events
    assert total == mongo_db.events.count_documents({})
    nobody = run_audit(ledger, mongo_db, "nobody")
    assert (nobody.accounts, nobody.events, nobody.ok) == (0, 0, True)


def test_trimmed_streams_audit_clean(ledger: QueueManager, mongo_db: Database[Any]) -> None:
    assert trim_half(ledger.redis) > 10
    report = run_audit(ledger, mongo_db)
    assert report.ok, report.mismatches
    assert report.events == mongo_db.events.count_documents({})


def test_unprojected_events_are_lagging_not_mismatches(
    ledger: QueueManager, mongo_db: Database[Any]
) -> None:
    ledger.purchase("u0", 5, "late-1")
    ledger.register_user("fresh", "fresh@example.com")
    report = run_audit(ledger, mongo_db)
    assert report.ok, report.mismatches
    assert {(m.user_id, m.where) for m in report.lagging} == {
        ("u0", "balances/u0"),
        ("u0", "credit_scores/u0"),
        ("fresh", "balances/fresh"),
        ("fresh", "credit_scores/fresh"),
    }
    project(ledger, mongo_db)
    report = run_audit(ledger, mongo_db)
    assert report.ok and report.lagging == []


# -- missing events ----------------------------------------------------------------


def test_event_deleted_before_it_was_archived(qm: QueueManager, mongo_db: Database[Any]) -> None:
    traffic(qm, users=4, events=50)
    stream, eid, fields = not_first(qm.redis, "u2")
    assert qm.redis.xdel(stream, eid) == 1
    project(qm, mongo_db)  # the archive never sees it
    report = run_audit(qm, mongo_db)
    assert found(report) == {("u2", A.VERSION_GAP)}
    gap = report.mismatches[0]
    assert gap.expected == f"version {int(fields[b'v'])}"
    assert run_audit(qm, mongo_db, "u1").ok


def test_newest_event_deleted_before_it_was_archived(
    qm: QueueManager, mongo_db: Database[Any]
) -> None:
    traffic(qm, users=3, events=30)
    stream, eid, _ = entries_of(qm.redis, "u1")[-1]
    qm.redis.xdel(stream, eid)
    project(qm, mongo_db)
    report = run_audit(qm, mongo_db)
    # no gap in what is left, but Redis knows the account went further
    assert found(report) == {("u1", A.MISSING_EVENTS)}


def test_archived_event_deleted_from_its_stream(
    ledger: QueueManager, mongo_db: Database[Any]
) -> None:
    stream, eid, _ = not_first(ledger.redis, "u3")
    assert ledger.redis.xdel(stream, eid) == 1
    report = run_audit(ledger, mongo_db)
    # the log is still whole (the archive has it), but the stream was tampered with
    assert found(report) == {("u3", A.DELETED)}
    assert report.mismatches[0].where == f"{stream} {eid}"


def test_events_deleted_from_stream_and_archive(
    ledger: QueueManager, mongo_db: Database[Any]
) -> None:
    stream, eid, fields = not_first(ledger.redis, "u4")
    ledger.redis.xdel(stream, eid)
    mongo_db.events.delete_one({"_id": f"u4:{int(fields[b'v'])}"})
    assert found(run_audit(ledger, mongo_db)) == {("u4", A.VERSION_GAP)}


def test_archive_document_deleted_while_the_stream_holds_it(
    ledger: QueueManager, mongo_db: Database[Any]
) -> None:
    mongo_db.events.delete_one({"_id": "u0:2"})
    report = run_audit(ledger, mongo_db)
    assert found(report) == {("u0", A.NOT_ARCHIVED)}


# -- changed events -------------------------------------------------------------------


def change_amount(target: str, new_amount: int, *, rehash: bool = False):  # type: ignore[no-untyped-def]
    """A ``rewrite_stream`` change: give entry ``target`` another amount (and balance
    after it); with ``rehash``, recompute its hash as a careful forger would."""

    def change(eid: str, fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
        if eid != target:
            return fields
        old = int(fields[b"a"])
        f = dict(fields)
        f[b"a"] = str(new_amount).encode()
        f[b"b"] = str(int(f[b"b"]) - old + new_amount).encode()
        if f[b"k"] == b"credits_purchased":
            f[b"p"] = str(int(f[b"p"]) - old + new_amount).encode()
        if rehash:
            s = {k.decode(): v.decode() for k, v in f.items()}
            f[b"h"] = link(
                s["k"],
                s["u"],
                int(s["v"]),
                int(s["t"]),
                int(s["a"]),
                int(s["b"]),
                int(s["p"]),
                int(s["x"]),
                s["tx"],
                s["r"],
                s["ph"],
            ).encode()
        return f

    return change


def a_purchase(qm: QueueManager, user: str) -> tuple[str, str, dict[bytes, bytes]]:
    return next(e for e in entries_of(qm.redis, user)[:-1] if e[2][b"k"] == b"credits_purchased")


def test_stream_entry_changed_after_it_was_archived(
    ledger: QueueManager, mongo_db: Database[Any]
) -> None:
    stream, eid, fields = a_purchase(ledger, "u1")
    rewrite_stream(ledger.redis, stream, change_amount(eid, int(fields[b"a"]) + 1000))
    assert stream_entries(ledger.redis, stream, min=eid, max=eid)[0][1][b"a"] != fields[b"a"]
    report = run_audit(ledger, mongo_db)
    assert found(report) == {("u1", A.ARCHIVE_DIFFERS), ("u1", A.CHAIN_BROKEN)}
    differs = {m.where.split(" vs ")[0] for m in report.mismatches if m.what == A.ARCHIVE_DIFFERS}
    v = int(fields[b"v"])
    assert differs == {
        f"events/u1:{v}.amount",
        f"events/u1:{v}.balance_after",
        f"events/u1:{v}.purchased_total",
    }


def test_stream_entry_forged_before_it_was_projected(
    qm: QueueManager, mongo_db: Database[Any]
) -> None:
    traffic(qm, users=3, events=40)
    stream, eid, fields = a_purchase(qm, "u2")
    # a forger changes the amount and recomputes that event's own hash
    rewrite_stream(qm.redis, stream, change_amount(eid, int(fields[b"a"]) + 1000, rehash=True))
    project(qm, mongo_db)  # the archive copies the forgery
    report = run_audit(qm, mongo_db)
    chain = [m for m in report.mismatches if m.what == A.CHAIN_BROKEN]
    assert {m.user_id for m in report.mismatches} == {"u2"}
    # the next event still links to the original hash
    assert len(chain) == 1 and f"version {int(fields[b'v']) + 1}" in chain[0].found


def test_archive_document_changed(ledger: QueueManager, mongo_db: Database[Any]) -> None:
    mongo_db.events.update_one({"_id": "u3:1"}, {"$set": {"text": "evil@example.com"}})
    report = run_audit(ledger, mongo_db)
    assert found(report) == {("u3", A.ARCHIVE_DIFFERS)}
    (m,) = report.mismatches
    assert (m.expected, m.found) == ("u3@example.com", "evil@example.com")
    # once the stream copy is trimmed away, the chain shows it
    for stream, eid, _ in entries_of(ledger.redis, "u3")[:1]:
        ledger.redis.xtrim(stream, minid=_after(eid), approximate=False)
    # the changed registration breaks the chain and disagrees with the email in Redis
    assert found(run_audit(ledger, mongo_db)) == {("u3", A.CHAIN_BROKEN), ("u3", A.STATE)}


def _after(entry_id: str) -> str:
    ms, seq = entry_id.split("-")
    return f"{ms}-{int(seq) + 1}"


# -- reordered events ------------------------------------------------------------------


CONTENT = (
    "kind",
    "user_id",
    "version",
    "at_ms",
    "amount",
    "balance_after",
    "purchased_total",
    "used_total",
    "text",
    "ref",
    "prev_hash",
    "hash",
    "stream",
    "entry_id",
)


def swap_archive(db: Database[Any], a: str, b: str, fields: tuple[str, ...]) -> None:
    da, db_ = db.events.find_one({"_id": a}), db.events.find_one({"_id": b})
    assert da is not None and db_ is not None
    db.events.update_one({"_id": a}, {"$set": {k: db_[k] for k in fields}})
    db.events.update_one({"_id": b}, {"$set": {k: da[k] for k in fields}})


def trim_everything(qm: QueueManager) -> None:
    for p in keys.partitions(PARTITIONS):
        for lv in keys.LEVELS_DESC:
            stream = keys.stream(p, lv)
            last = qm.redis.xrevrange(stream, count=1)
            if last:
                qm.redis.xtrim(stream, minid=_after(text(last[0][0])), approximate=False)


def test_archive_documents_swapped_whole(ledger: QueueManager, mongo_db: Database[Any]) -> None:
    trim_everything(ledger)  # the archive is the only copy
    assert run_audit(ledger, mongo_db).ok
    swap_archive(mongo_db, "u2:3", "u2:4", CONTENT)
    report = run_audit(ledger, mongo_db)
    assert found(report) == {("u2", A.ARCHIVE_ID)}
    assert {(m.where, m.expected) for m in report.mismatches} == {
        ("events/u2:3", "u2:4"),
        ("events/u2:4", "u2:3"),
    }


def test_archive_events_reordered_under_their_versions(
    ledger: QueueManager, mongo_db: Database[Any]
) -> None:
    trim_everything(ledger)
    # the events trade places; each document keeps its _id and version
    swap_archive(mongo_db, "u2:3", "u2:4", tuple(f for f in CONTENT if f != "version"))
    report = run_audit(ledger, mongo_db)
    assert found(report) == {("u2", A.CHAIN_BROKEN)}


def test_stream_entries_reordered(qm: QueueManager, mongo_db: Database[Any]) -> None:
    qm.register_user("o", "o@example.com")
    qm.purchase("o", 100, "o-1")
    qm.use("o", 30, reason="a")
    qm.use("o", 20, reason="b")
    entries = entries_of(qm.redis, "o")
    stream = entries[0][0]
    assert {e[0] for e in entries} == {stream}
    by_id = {eid: fields for _, eid, fields in entries}
    third, fourth = entries[2][1], entries[3][1]
    # swap the two uses' contents, keeping each entry's id (so their order in the stream)
    rewrite_stream(
        qm.redis,
        stream,
        lambda eid, f: by_id[fourth] if eid == third else by_id[third] if eid == fourth else f,
    )
    project(qm, mongo_db)
    assert run_audit(qm, mongo_db).ok  # versions, not stream order, order the log
    # now swap their versions: the use of 20 claims to come before the use of 30
    rewrite_stream(
        qm.redis,
        stream,
        lambda eid, f: (
            {**f, b"v": b"3"} if eid == third else {**f, b"v": b"4"} if eid == fourth else f
        ),
    )
    report = run_audit(qm, mongo_db)
    assert ("o", A.CHAIN_BROKEN) in found(report)
    assert {m.user_id for m in report.mismatches} == {"o"}


# -- read models and Redis state ------------------------------------------------------


def test_balances_document_edited(ledger: QueueManager, mongo_db: Database[Any]) -> None:
    doc = mongo_db.balances.find_one({"_id": "u1"})
    assert doc is not None
    mongo_db.balances.update_one({"_id": "u1"}, {"$set": {"balance": doc["balance"] + 1}})
    report = run_audit(ledger, mongo_db)
    assert found(report) == {("u1", "balances")}
    (m,) = report.mismatches
    assert (m.where, m.expected, m.found) == (
        "balances/u1.balance",
        doc["balance"],
        doc["balance"] + 1,
    )


def test_balances_document_with_an_extra_field_or_a_float(
    ledger: QueueManager, mongo_db: Database[Any]
) -> None:
    doc = mongo_db.balances.find_one({"_id": "u2"})
    assert doc is not None
    mongo_db.balances.update_one(
        {"_id": "u2"}, {"$set": {"note": "hi", "balance": float(doc["balance"])}}
    )
    report = run_audit(ledger, mongo_db)
    assert {m.where for m in report.mismatches} == {"balances/u2.balance", "balances/u2.note"}


def test_balances_document_deleted_or_invented(
    ledger: QueueManager, mongo_db: Database[Any]
) -> None:
    mongo_db.balances.delete_one({"_id": "u0"})
    mongo_db.balances.insert_one({"_id": "ghost", "balance": 100, "version": 1})
    report = run_audit(ledger, mongo_db)
    assert found(report) == {("u0", "balances"), ("ghost", A.VIEW_WITHOUT_EVENTS)}
    assert report.accounts == 6


def test_balances_document_rolled_back(ledger: QueueManager, mongo_db: Database[Any]) -> None:
    """An older, once-correct state is stale: its projector acknowledged the newer events."""
    from projections.balances import balance_fields
    from projections.eventlog import read_log

    events = read_log(ledger.redis, PARTITIONS, mongo_db)["u4"]
    assert len(events) >= 3
    old = balance_fields(events[-3].event)
    mongo_db.balances.replace_one({"_id": "u4"}, {"_id": "u4", **old})
    report = run_audit(ledger, mongo_db)
    assert found(report) == {("u4", "balances")}
    assert report.mismatches[0].where == "balances/u4.version"


def test_credit_score_edited(ledger: QueueManager, mongo_db: Database[Any]) -> None:
    mongo_db.credit_scores.update_one({"_id": "u3"}, {"$inc": {"score": 50}})
    mongo_db.credit_scores.update_one({"_id": "u0"}, {"$set": {"version": 10_000}})
    report = run_audit(ledger, mongo_db)
    assert found(report) == {("u3", "credit_scores"), ("u0", "credit_scores")}
    assert {m.where for m in report.mismatches} == {
        "credit_scores/u3.score",
        "credit_scores/u0.version",
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [("balance", "999999"), ("version", "2"), ("head", "0" * 40), ("email", "x@y.z")],
)
def test_redis_account_state_changed(
    ledger: QueueManager, mongo_db: Database[Any], field: str, value: str
) -> None:
    key = keys.account(keys.partition_of("u1", PARTITIONS), "u1")
    assert ledger.redis.hget(key, field) != value.encode()
    ledger.redis.hset(key, field, value)
    report = run_audit(ledger, mongo_db)
    assert found(report) == {("u1", A.STATE)}
    assert any(m.where.endswith(f".{field}") and m.found == value for m in report.mismatches)


def test_redis_account_state_missing_or_invented(
    ledger: QueueManager, mongo_db: Database[Any]
) -> None:
    ledger.redis.delete(keys.account(keys.partition_of("u2", PARTITIONS), "u2"))
    ledger.redis.hset(
        keys.account(keys.partition_of("phantom", PARTITIONS), "phantom"),
        mapping={
            "version": "3",
            "balance": "10",
            "purchased": "10",
            "used": "0",
            "head": "0" * 40,
            "email": "p@x",
        },
    )
    report = run_audit(ledger, mongo_db)
    assert found(report) == {("u2", A.NO_STATE), ("phantom", A.MISSING_EVENTS)}


def test_undecodable_entry_is_reported(ledger: QueueManager, mongo_db: Database[Any]) -> None:
    stream = keys.stream(keys.partition_of("u0", PARTITIONS), keys.LEVEL_BY_NAME["normal"])
    ledger.redis.xadd(stream, {"k": "credits_purchased", "u": "u0", "v": "nope"})
    report = run_audit(ledger, mongo_db)
    assert found(report) == {("u0", A.UNDECODABLE)}


def test_duplicated_stream_entry_is_reported(ledger: QueueManager, mongo_db: Database[Any]) -> None:
    stream, _, fields = entries_of(ledger.redis, "u1")[1]
    ledger.redis.xadd(stream, fields)  # type: ignore[arg-type]
    report = run_audit(ledger, mongo_db)
    assert found(report) == {("u1", A.DUPLICATE)}


def test_report_as_json(ledger: QueueManager, mongo_db: Database[Any]) -> None:
    before = mongo_db.balances.find_one({"_id": "u1"})
    assert before is not None
    mongo_db.balances.update_one({"_id": "u1"}, {"$set": {"balance": -5}})
    doc = json.loads(json.dumps(run_audit(ledger, mongo_db).as_dict()))
    assert doc["ok"] is False and doc["mismatched_accounts"] == ["u1"]
    assert doc["mismatches"] == [
        {
            "user_id": "u1",
            "what": "balances",
            "where": "balances/u1.balance",
            "expected": before["balance"],
            "found": -5,
        }
    ]


def test_view_that_missed_trimmed_events_is_stale_not_lagging(
    qm: QueueManager, mongo_db: Database[Any]
) -> None:
    """Only the archive projector ran before the streams were trimmed: the other
    projectors can never be given those events, so their views are wrong, not late."""
    from projections.archive import Archive
    from projections.replay import replay
    from projections.runner import projector
    from streams.retention import trim

    traffic(qm, users=2, events=10)
    projector(qm.redis, PARTITIONS, mongo_db, Archive()).run_until_idle()
    # an operator trims requiring only the archive group (the default requires them all)
    assert trim(qm.redis, PARTITIONS, keep_ms=0, required=("proj:events",)) > 0
    project(qm, mongo_db)  # the balances and credit_scores projectors find nothing
    assert mongo_db.balances.count_documents({}) == 0
    report = run_audit(qm, mongo_db)
    assert found(report) == {(u, v) for u in ("u0", "u1") for v in ("balances", "credit_scores")}
    assert report.lagging == []
    replay(qm.redis, PARTITIONS, mongo_db)
    assert run_audit(qm, mongo_db).ok


# -- the command line --------------------------------------------------------------------


def test_cli_audit_clean_and_dirty(
    ledger: QueueManager, mongo_db: Database[Any], cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("audit") == 0
    out = capsys.readouterr().out
    events = mongo_db.events.count_documents({})
    assert out.splitlines() == [f"audited 5 accounts, {events} events: 0 mismatches"]
    ledger.redis.hset(keys.account(keys.partition_of("u3", PARTITIONS), "u3"), "balance", "1")
    assert cli("audit") == 1
    out = capsys.readouterr().out
    assert "events: 1 mismatch\n" in out
    assert "MISMATCH u3: account_state at ledger:{p" in out
    assert cli("audit", "--user", "u2") == 0
    assert capsys.readouterr().out.startswith("audited 1 accounts, ")
    assert cli("audit", "--user", "u3", "--json") == 1
    doc = json.loads(capsys.readouterr().out)
    assert (doc["ok"], doc["accounts"], doc["mismatched_accounts"]) == (False, 1, ["u3"])


def test_cli_audit_unknown_user(
    ledger: QueueManager, cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("audit", "--user", "no-such-user") == 5
    assert "no account for user 'no-such-user'" in capsys.readouterr().err
    assert cli("audit", "--user", "*") == 5  # not a pattern


def test_cli_settings_and_usage_errors(
    redis_url: str, mongo_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from api.cli.audit import run
    from api.settings import Settings

    args = parser().parse_args(["audit"])
    assert run(args, Settings(redis_url=redis_url, mongo_url=None)) == 2
    assert "MONGO_URL is not set" in capsys.readouterr().err
    assert run(args, Settings(redis_url=None, mongo_url=mongo_url)) == 2
    assert "REDIS_URL is not set" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(["audit", "--bogus"])
    assert exc.value.code == 2


def test_cli_refuses_another_partition_count(
    ledger: QueueManager,
    redis_url: str,
    mongo_url: str,
    mongo_db: Database[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from api.cli.audit import run
    from api.settings import Settings

    args = parser().parse_args(["audit"])
    settings = Settings(
        redis_url=redis_url, mongo_url=mongo_url, mongo_db=mongo_db.name, partitions=PARTITIONS + 1
    )
    assert run(args, settings) == 2
    assert f"holds a ledger with {PARTITIONS} partitions" in capsys.readouterr().err


def test_cli_unreachable_mongo(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from api.cli.audit import run
    from api.dev.embedded import free_port
    from api.settings import Settings

    url = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300"
    args = parser().parse_args(["audit"])
    settings = Settings(redis_url=redis_url, mongo_url=url, partitions=PARTITIONS)
    assert run(args, settings) == 4  # (the session Redis may hold a ledger of PARTITIONS)
    assert "MongoDB is unavailable" in capsys.readouterr().err
