"""Account statements add up, row by row, to the account's balance."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from pymongo.database import Database

from ledger.errors import ChainBroken, UnknownAccount
from projections.statement import COLUMNS, statement, write
from streams import QueueManager
from streams.replies import text
from streams.times import iso_utc

from .conftest import PARTITIONS, Cli, all_streams, parser, project, traffic, trim_half


def check_adds_up(rows: list[dict[str, Any]], qm: QueueManager, user: str) -> None:
    balance = purchased = used = 0
    for i, r in enumerate(rows, start=1):
        assert r["version"] == i and r["event_id"] == f"{user}:{i}"
        balance += r["amount"]
        if r["kind"] == "credits_purchased":
            purchased += r["amount"]
        if r["kind"] == "credits_used":
            used -= r["amount"]
        assert (r["balance"], r["purchased_total"], r["used_total"]) == (balance, purchased, used)
    state = qm.balance(user)
    assert state is not None
    assert (
        rows[-1]["balance"],
        rows[-1]["purchased_total"],
        rows[-1]["used_total"],
        rows[-1]["hash"],
    ) == (state["balance"], state["purchased_total"], state["used_total"], state["head"])


def test_rows_add_up_to_the_balance(qm: QueueManager, mongo_db: Database[Any]) -> None:
    names = traffic(qm, users=3, events=40)
    project(qm, mongo_db)
    trim_half(qm.redis)  # half of it from the archive: the same statement
    for name in names:
        rows = statement(qm.redis, PARTITIONS, mongo_db, name)
        assert rows[0]["kind"] == "user_registered" and rows[0]["amount"] == 0
        check_adds_up(rows, qm, name)


def test_columns_and_csv(qm: QueueManager, mongo_db: Database[Any]) -> None:
    qm.register_user("c", "c@example.com")
    qm.purchase("c", 500, "pay-1", currency="EUR")
    qm.use("c", 120, reason='report, "big"')
    qm.adjust("c", -30, reason='=HYPERLINK("http://x")')
    rows = statement(qm.redis, PARTITIONS, mongo_db, "c")
    out = io.StringIO()
    write(rows, "csv", out)
    parsed = list(csv.reader(io.StringIO(out.getvalue())))
    assert parsed[0] == list(COLUMNS)
    assert len(parsed) == 5
    table = [dict(zip(COLUMNS, line, strict=True)) for line in parsed[1:]]
    assert [(t["kind"], t["amount"], t["balance"]) for t in table] == [
        ("user_registered", "0", "0"),
        ("credits_purchased", "500", "500"),
        ("credits_used", "-120", "380"),
        ("credits_adjusted", "-30", "350"),
    ]
    assert (table[1]["currency"], table[1]["transaction_id"]) == ("EUR", "pay-1")
    assert table[2]["reason"] == 'report, "big"'
    assert table[3]["reason"] == '\'=HYPERLINK("http://x")'  # not a formula in a spreadsheet
    assert table[3]["purchased_total"] == "500" and table[3]["used_total"] == "120"
    assert all(t["time"].endswith("Z") and t["time"][10] == "T" for t in table)


def test_jsonl_keeps_types_and_text(qm: QueueManager, mongo_db: Database[Any]) -> None:
    qm.register_user("j", "j@example.com")
    qm.adjust("j", 40, reason="=1+1 grant")
    out = io.StringIO()
    write(statement(qm.redis, PARTITIONS, mongo_db, "j"), "jsonl", out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [list(line) for line in lines] == [list(COLUMNS)] * 2
    assert (lines[1]["amount"], lines[1]["balance"], lines[1]["reason"]) == (40, 40, "=1+1 grant")
    with pytest.raises(ValueError, match="unknown format"):
        write([], "xlsx", io.StringIO())


def test_iso_utc_is_exact() -> None:
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1_795_836_042_299) == "2026-11-28T03:20:42.299Z"
    assert iso_utc(1_700_000_000_001) == "2023-11-14T22:13:20.001Z"


def test_unknown_account_and_broken_history(qm: QueueManager, mongo_db: Database[Any]) -> None:
    with pytest.raises(UnknownAccount):
        statement(qm.redis, PARTITIONS, mongo_db, "nobody")
    qm.register_user("b", "b@example.com")
    qm.purchase("b", 10, "b-1")
    project(qm, mongo_db)
    for stream in all_streams():  # archived: the streams may go
        last = qm.redis.xrevrange(stream, count=1)
        if last:
            ms, seq = text(last[0][0]).split("-")
            qm.redis.xtrim(stream, minid=f"{ms}-{int(seq) + 1}", approximate=False)
    assert len(statement(qm.redis, PARTITIONS, mongo_db, "b")) == 2
    mongo_db.events.update_one(
        {"_id": "b:2"}, {"$set": {"amount": 1000, "balance_after": 1000, "purchased_total": 1000}}
    )
    with pytest.raises(ChainBroken):
        statement(qm.redis, PARTITIONS, mongo_db, "b")


# -- the command line --------------------------------------------------------------------


def test_cli_export(
    qm: QueueManager,
    mongo_db: Database[Any],
    cli: Cli,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    traffic(qm, users=2, events=20)
    expected = statement(qm.redis, PARTITIONS, mongo_db, "u1")
    assert cli("audit", "export", "--user", "u1", "--format", "csv") == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(t["balance"]) for t in table] == [r["balance"] for r in expected]
    out = tmp_path / "u1.jsonl"
    assert cli("audit", "export", "--user", "u1", "--format", "jsonl", "--out", str(out)) == 0
    assert f"wrote {len(expected)} rows to {out}" in capsys.readouterr().err
    assert [json.loads(line) for line in out.read_text().splitlines()] == expected
    assert cli("audit", "export", "--user", "u1", "--out", str(tmp_path / "no" / "x.csv")) == 2
    assert "cannot write" in capsys.readouterr().err


def test_cli_export_hostile_input(
    qm: QueueManager, mongo_db: Database[Any], cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    qm.register_user("h", "h@example.com")
    assert cli("audit", "export", "--user", "ghost") == 5
    assert "no account for user 'ghost'" in capsys.readouterr().err
    assert cli("audit", "export", "--user", "'; db.dropDatabase(); '") == 5
    for bad in (["--format", "xlsx"], ["--format", ""], []):
        with pytest.raises(SystemExit) as exc:
            parser().parse_args(["audit", "export", *(["--user", "h"] if bad else []), *bad])
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'xlsx'" in err and "--user" in err
    # a history that does not verify is not exported
    project(qm, mongo_db)
    mongo_db.events.update_one({"_id": "h:1"}, {"$set": {"text": "x@example.com"}})
    for stream in all_streams():
        last = qm.redis.xrevrange(stream, count=1)
        if last:
            ms, seq = text(last[0][0]).split("-")
            qm.redis.xtrim(stream, minid=f"{ms}-{int(seq) + 1}", approximate=False)
    assert cli("audit", "export", "--user", "h") == 1
    assert "does not verify" in capsys.readouterr().err


def test_cli_options_before_export_are_kept(
    mongo_url: str, redis_url: str, mongo_db: Database[Any]
) -> None:
    args = parser().parse_args(
        [
            "audit",
            "--mongo-db",
            mongo_db.name,
            "--redis-url",
            redis_url,
            "export",
            "--user",
            "x",
            "--format",
            "jsonl",
        ]
    )
    assert (args.mongo_db, args.redis_url, args.user, args.format) == (
        mongo_db.name,
        redis_url,
        "x",
        "jsonl",
    )
    args = parser().parse_args(["audit", "export", "--mongo-db", "other", "--user", "x"])
    assert (args.mongo_db, args.format, args.out) == ("other", "csv", None)
