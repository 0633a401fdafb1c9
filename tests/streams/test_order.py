"""Stream entry ids are ordered as numbers (ms, seq), never as text ("…-10" follows "…-2")."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ledger.commands import Purchase, RegisterUser
from ledger.tasks import Priority
from streams import HandlerRegistry, QueueManager, Worker, keys
from streams.deadletters import list_dead
from streams.handlers import DBManager
from streams.ids import format_id, parse_id
from streams.replies import entries as stream_entries
from tests.streamlog import xadd_fields

from .conftest import PARTITIONS


def test_parse_id_orders_numerically() -> None:
    ids = ["5-10", "5-2", "10-0", "9-11", "5-0"]
    assert sorted(ids, key=parse_id) == ["5-0", "5-2", "5-10", "9-11", "10-0"]
    assert parse_id(b"1700000000000-12") == (1700000000000, 12) and parse_id("7") == (7, 0)
    assert format_id(parse_id("5-10")) == "5-10"


def test_one_accounts_events_reach_the_handler_in_version_order(
    qm: QueueManager, registry: HandlerRegistry, make_worker: Callable[..., Worker]
) -> None:
    seen: list[int] = []

    def record(data: Mapping[str, Any], db_manager: DBManager) -> bool:
        seen.append(data["version"])
        return True

    registry.register("user_registration", record)
    registry.register("credit_purchase", record)
    qm.append_batch(
        [
            (RegisterUser(user_id="ord", email="o@example.com"), Priority.NORMAL, None),
            *(
                (
                    Purchase(user_id="ord", amount=1, currency="USD", transaction_id=f"t{i}"),
                    Priority.NORMAL,
                    None,
                )
                for i in range(40)
            ),
        ]
    )
    # the same 41 entries, all in one millisecond (seq 0..40), as a fast batch gives them
    stream = keys.stream(keys.partition_of("ord", PARTITIONS), Priority.NORMAL)
    entries = stream_entries(qm.redis, stream)
    assert len(entries) == 41
    qm.redis.delete(stream)
    for seq, (_, fields) in enumerate(entries):
        qm.redis.xadd(stream, xadd_fields(fields), id=f"1700000000000-{seq}")

    worker = make_worker(batch=64 * PARTITIONS)  # one round takes them all
    assert worker.step() == 41
    assert seen == list(range(1, 42))


def test_dead_letters_list_newest_first_within_a_millisecond(qm: QueueManager) -> None:
    p0 = keys.partitions(PARTITIONS)[0]
    dead = keys.dead(p0)
    for seq in (2, 10):  # the same _at: only the entry id tells which is newer
        qm.redis.xadd(
            dead,
            {
                "k": "task",
                "id": f"t{seq}",
                "_at": 1700000000000,
                "_id": "1-0",
                "_stream": keys.stream(p0, Priority.NORMAL),
            },
            id=f"1700000000000-{seq}",
        )
    assert [d.id for d in list_dead(qm.redis, PARTITIONS)] == [
        "p0:1700000000000-10",
        "p0:1700000000000-2",
    ]
