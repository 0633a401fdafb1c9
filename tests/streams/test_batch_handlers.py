"""Batch handlers: one call for a run of tasks, one result per item, only the
failed items retried; the same exactly-once, retry, dead-letter and ordering
guarantees as single handlers; and the default DB handler's batched inserts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
from pymongo.database import Database

from ledger.errors import ValidationError
from ledger.tasks import Priority
from streams import (
    BatchDBManager,
    HandlerRegistry,
    QueueManager,
    Retry,
    RetryPolicy,
    Worker,
    WorkerConfig,
    batch_handler,
    keys,
)
from streams.handlers import DBManager
from streams.registry import MAX_BATCH_LIMIT
from tests.helpers import eventually

from .conftest import PARTITIONS

MakeWorker = Callable[..., Worker]
Items = list[Mapping[str, Any]]
ROOT = Path(__file__).resolve().parents[2]


def status(qm: QueueManager, task_id: str) -> dict[str, Any]:
    found = qm.get_task_status(task_id)
    assert found is not None
    return found


def pending(qm: QueueManager) -> int:
    return sum(
        qm.redis.xpending(keys.stream(p, lv), "workers")["pending"]
        for p in keys.partitions(PARTITIONS)
        for lv in keys.LEVELS_DESC
    )


# -- results map to items -------------------------------------------------------------


def test_only_failed_items_are_retried_and_the_hopeless_one_is_dead_lettered(
    qm: QueueManager, make_worker: MakeWorker
) -> None:
    calls: list[list[int]] = []
    seen: Counter[int] = Counter()

    def flaky(items: Items, db_manager: BatchDBManager) -> list[bool]:
        calls.append([item["i"] for item in items])
        results = []
        for item in items:
            seen[item["i"]] += 1
            # 7 never works; multiples of 3 fail their first attempt only
            results.append(item["i"] != 7 and not (item["i"] % 3 == 0 and seen[item["i"]] == 1))
        return results

    qm.register_batch_handler("flaky", flaky)
    ids = {i: qm.enqueue("default", "flaky", {"i": i}) for i in range(10)}
    make_worker(batch=64, retry=RetryPolicy(max_attempts=3, base_ms=10, max_ms=50)).run_until_idle()

    assert len(calls[0]) == 10, calls  # the first round: one call for all ten
    for i, task_id in ids.items():
        st = status(qm, task_id)
        if i == 7:
            assert (seen[i], st["status"], st["attempts"]) == (3, "failed", 3)
        elif i % 3 == 0:
            assert (seen[i], st["status"], st["attempts"]) == (2, "completed", 2)
        else:  # succeeded at once, never run again
            assert (seen[i], st["status"], st["attempts"]) == (1, "completed", 1)
    [dead] = qm.dead_letters()
    assert (dead.task_id, dead.attempts) == (ids[7], 3)
    assert dead.error == "batch handler returned False for this item"
    assert qm.get_queue_stats("default")["dead"] == 1
    assert pending(qm) == 0


@pytest.mark.parametrize(
    ("result", "error"),
    [
        (lambda n: [True] * (n - 1), "batch handler for 'bad' returned 2 results for 3 items"),
        (lambda n: [True] * (n + 1), "batch handler for 'bad' returned 4 results for 3 items"),
        (lambda n: [True, 1, True], "batch handler for 'bad' result [1] is int, not bool"),
        (lambda n: [True, None, True], "batch handler for 'bad' result [1] is NoneType, not bool"),
        (lambda n: True, "batch handler for 'bad' must return a list of 3 bools, got bool"),
        (lambda n: None, "batch handler for 'bad' must return a list of 3 bools, got NoneType"),
        (
            lambda n: (True for _ in range(n)),
            "batch handler for 'bad' must return a list of 3 bools, got generator",
        ),
        (lambda n: {0: True}, "batch handler for 'bad' must return a list of 3 bools, got dict"),
    ],
    ids=["short", "long", "int", "none-item", "bool", "none", "generator", "dict"],
)
def test_a_malformed_result_fails_every_item_of_the_call(
    qm: QueueManager, make_worker: MakeWorker, result: Callable[[int], Any], error: str
) -> None:
    qm.register_batch_handler("bad", lambda items, db: result(len(items)))
    ids = [qm.enqueue("default", "bad", {"i": i}) for i in range(3)]
    make_worker(retry=RetryPolicy(max_attempts=1)).run_until_idle()
    assert {status(qm, t)["status"] for t in ids} == {"failed"}
    dead = qm.dead_letters()
    assert sorted(str(d.task_id) for d in dead) == sorted(ids)
    assert {d.error for d in dead} == {error}


def test_an_exception_fails_every_item_and_retry_retries_them(
    qm: QueueManager, make_worker: MakeWorker
) -> None:
    runs: list[list[str]] = []

    def boom(items: Items, db_manager: BatchDBManager) -> list[bool]:
        raise TimeoutError("upstream timed out")

    def later(items: Items, db_manager: BatchDBManager) -> list[bool]:
        runs.append([item["k"] for item in items])
        if len(runs) == 1:
            raise Retry(delay_ms=30)
        return [True] * len(items)

    qm.register_batch_handler("boom", boom)
    qm.register_batch_handler("later", later)
    boom_ids = [qm.enqueue("default", "boom", {"k": str(i)}) for i in range(2)]
    make_worker(retry=RetryPolicy(max_attempts=1)).run_until_idle()
    for t in boom_ids:
        st = status(qm, t)
        assert (st["status"], st["last_error"]) == ("failed", "TimeoutError: upstream timed out")

    later_ids = [qm.enqueue("default", "later", {"k": k}) for k in "ab"]
    started = time.monotonic()
    make_worker(retry=RetryPolicy(max_attempts=3, base_ms=5_000)).run_until_idle()
    assert [sorted(r) for r in runs] == [["a", "b"], ["a", "b"]]
    assert time.monotonic() - started < 4  # the Retry's 30 ms, not the policy's 5 s
    for t in later_ids:
        assert (status(qm, t)["status"], status(qm, t)["attempts"]) == ("completed", 2)


# -- ordering -------------------------------------------------------------------------


def test_runs_of_one_type_are_batched_in_order_and_never_across_other_handlers(
    qm: QueueManager, registry: HandlerRegistry, make_worker: MakeWorker, mongo_db: Database[Any]
) -> None:
    log: list[tuple[str, list[str]]] = []

    def a(items: Items, db_manager: BatchDBManager) -> list[bool]:
        # a call sees what came before its items: the single handler's marks
        log.append(("a", [item["n"] for item in items]))
        return [True] * len(items)

    def b(data: Mapping[str, Any], db_manager: DBManager) -> bool:
        log.append(("b", [data["n"]]))
        return True

    registry.register_batch("a", a, max_batch=3)
    registry.register("b", b)
    order = ["a1", "a2", "b1", "a3", "a4", "a5", "a6", "a7", "b2", "a8"]
    for n in order:
        qm.enqueue("default", n[0], {"n": n})
        time.sleep(0.002)  # distinct stream ids: one order across partitions
    qm.enqueue("high_priority", "a", {"n": "h1"}, priority=Priority.HIGH)  # runs first
    qm.register_user("u1", "u1@example.com")  # a recorded event does not split a run
    qm.enqueue("default", "a", {"n": "a9"})
    make_worker(batch=64).run_until_idle()  # all in one round
    assert log == [
        ("a", ["h1", "a1", "a2"]),  # consecutive in the round's order, HIGH first
        ("b", ["b1"]),
        ("a", ["a3", "a4", "a5"]),  # max_batch=3
        ("a", ["a6", "a7"]),
        ("b", ["b2"]),
        ("a", ["a8", "a9"]),
    ]
    assert mongo_db.users.find_one({"_id": "u1:1"}) is not None


def test_a_batch_handler_for_an_event_type_gets_the_events(
    qm: QueueManager, registry: HandlerRegistry, make_worker: MakeWorker, mongo_db: Database[Any]
) -> None:
    got: list[list[str]] = []

    def registrations(items: Items, db_manager: BatchDBManager) -> list[bool]:
        got.append([item["user_id"] for item in items])
        docs = [{"_id": i, **item} for i, item in zip(db_manager.task_ids, items, strict=True)]
        db_manager.insert_all("users", docs)  # its own ids: the events' ids
        return [True] * len(items)

    def forger(items: Items, db_manager: BatchDBManager) -> list[bool]:
        db_manager.insert_all("credit_purchases", [{"_id": "u9:1", "amount": 10**6}])
        return [True] * len(items)

    registry.register_batch("user_registration", registrations)
    for u in ("u1", "u2", "u3"):
        qm.register_user(u, f"{u}@example.com")
    make_worker().run_until_idle()
    assert sorted(u for call in got for u in call) == ["u1", "u2", "u3"]
    assert sorted(d["_id"] for d in mongo_db.users.find()) == ["u1:1", "u2:1", "u3:1"]
    # an id of a recorded event's form that is not the batch's own is refused
    qm.register_batch_handler("forger", forger)
    forged = qm.enqueue("default", "forger", {})
    make_worker(retry=RetryPolicy(max_attempts=1)).run_until_idle()
    assert "has the form of a ledger event id" in status(qm, forged)["last_error"]
    assert mongo_db.credit_purchases.count_documents({}) == 0


# -- exactly-once ---------------------------------------------------------------------


class Crash(BaseException):
    """Stands for the process dying: nothing after it in the round runs or settles."""


def test_redelivery_after_a_crash_does_not_double_effects(
    qm: QueueManager, make_worker: MakeWorker, mongo_db: Database[Any]
) -> None:
    calls: list[int] = []

    def insert_each(items: Items, db_manager: BatchDBManager) -> list[bool]:
        calls.append(len(items))
        for i, item in enumerate(items):
            db_manager.for_item(i).insert("analytics", {"i": item["i"]})
            db_manager.for_item(i).insert("analytics", {"i": item["i"], "second": True})
        ids = db_manager.task_ids
        db_manager.insert_all(
            "notifications", [{"_id": t, "i": it["i"]} for t, it in zip(ids, items, strict=True)]
        )
        if len(calls) == 1:
            raise Crash  # after every effect, before the round is settled
        return [True] * len(items)

    qm.register_batch_handler("insert_each", insert_each)
    ids = [qm.enqueue("default", "insert_each", {"i": i}) for i in range(12)]
    with pytest.raises(Crash):
        make_worker(batch=64, claim_idle_ms=200).run_until_idle()
    assert pending(qm) == 12
    make_worker(claim_idle_ms=200).run_until_idle()  # takes them over once idle

    assert calls[0] == 12 and sum(calls[1:]) == 12  # each item redelivered once
    assert {status(qm, t)["status"] for t in ids} == {"completed"}
    docs = list(mongo_db.analytics.find())
    assert len(docs) == 24  # two per task, not four
    assert {d["_id"] for d in docs} == {*ids, *(f"{t}:2" for t in ids)}
    assert sorted(d["_id"] for d in mongo_db.notifications.find()) == sorted(ids)


def test_the_batch_db_manager_refuses_unbound_writes(
    qm: QueueManager, make_worker: MakeWorker
) -> None:
    def naive(items: Items, db_manager: Any) -> list[bool]:
        for item in items:
            db_manager.insert("analytics", dict(item))
        return [True] * len(items)

    def out_of_range(items: Items, db_manager: BatchDBManager) -> list[bool]:
        db_manager.for_item(len(items))
        return [True] * len(items)

    qm.register_batch_handler("naive", naive)
    qm.register_batch_handler("oob", out_of_range)
    naive_id = qm.enqueue("default", "naive", {"i": 1})
    oob_id = qm.enqueue("default", "oob", {"i": 1})
    make_worker(retry=RetryPolicy(max_attempts=1)).run_until_idle()
    assert "for_item(i).insert" in status(qm, naive_id)["last_error"]
    assert status(qm, oob_id)["last_error"] == "IndexError: item 1 is not in this batch of 1"


def test_without_a_database_items_still_have_their_task_ids(
    qm: QueueManager, registry: HandlerRegistry
) -> None:
    seen: list[Sequence[str]] = []

    def keyed(items: Items, db_manager: BatchDBManager) -> list[bool]:
        seen.append(db_manager.task_ids)  # e.g. to make Redis writes idempotent
        return [True] * len(items)

    def uses_db(items: Items, db_manager: BatchDBManager) -> list[bool]:
        db_manager.for_item(0).insert("analytics", {})
        return [True] * len(items)

    registry.register_batch("keyed", keyed)
    registry.register_batch("uses_db", uses_db)
    ids = [qm.enqueue("default", "keyed", {"i": i}) for i in range(3)]
    no_db = qm.enqueue("default", "uses_db", {})
    worker = Worker(
        qm.redis,
        PARTITIONS,
        db=None,
        registry=registry,
        config=WorkerConfig(retry=RetryPolicy(max_attempts=1)),
    )
    worker.run_until_idle()
    assert sorted(t for call in seen for t in call) == sorted(ids)
    assert "no database configured" in status(qm, no_db)["last_error"]


# -- the default DB handler batches inserts -------------------------------------------


def test_default_db_inserts_of_one_collection_are_one_write_keyed_by_task_id(
    qm: QueueManager,
    make_worker: MakeWorker,
    mongo_db: Database[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert qm.db is not None
    writes: list[tuple[str, int]] = []
    real = qm.db.insert_all

    def spy(collection: str, documents: Sequence[Mapping[str, Any]]) -> None:
        writes.append((collection, len(documents)))
        real(collection, documents)

    monkeypatch.setattr(qm.db, "insert_all", spy)

    def insert(collection: str, data: dict[str, Any]) -> str:
        return qm.enqueue(
            "default", "db", {"operation": "insert", "collection": collection, "data": data}
        )

    analytics = [insert("analytics", {"n": i}) for i in range(5)]
    notes = [insert("notifications", {"n": i}) for i in range(3)]
    # a redelivered one: its document is already there (inserted by an earlier attempt)
    mongo_db.analytics.insert_one({"_id": analytics[0], "n": 0})
    make_worker().run_until_idle()
    assert sorted(writes) == [("analytics", 5), ("notifications", 3)]

    # its own _id: inserted alone, never through insert_all (a round of its own, as
    # tasks of different partitions enqueued in one millisecond have no fixed order)
    named = insert("analytics", {"_id": "mine", "n": 99})
    make_worker().run_until_idle()
    assert sorted(writes) == [("analytics", 5), ("notifications", 3)]
    assert {status(qm, t)["status"] for t in [*analytics, *notes, named]} == {"completed"}
    assert mongo_db.analytics.count_documents({}) == 6
    assert sorted(d["_id"] for d in mongo_db.notifications.find()) == sorted(notes)
    assert mongo_db.analytics.find_one({"_id": analytics[3]}) == {"_id": analytics[3], "n": 3}
    assert mongo_db.analytics.find_one({"_id": "mine"}) == {"_id": "mine", "n": 99}


def test_a_failed_batched_insert_falls_back_to_one_by_one(
    qm: QueueManager,
    make_worker: MakeWorker,
    mongo_db: Database[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert qm.db is not None

    def down(collection: str, documents: Sequence[Mapping[str, Any]]) -> None:
        raise RuntimeError("bulk write refused")

    monkeypatch.setattr(qm.db, "insert_all", down)
    ids = [
        qm.enqueue(
            "default", "db", {"operation": "insert", "collection": "analytics", "data": {"n": i}}
        )
        for i in range(4)
    ]
    make_worker().run_until_idle()
    assert {status(qm, t)["status"] for t in ids} == {"completed"}
    assert sorted(d["_id"] for d in mongo_db.analytics.find()) == sorted(ids)


# -- registration ---------------------------------------------------------------------


def ok(items: Items, db_manager: BatchDBManager) -> list[bool]:
    return [True] * len(items)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_batch": 0}, "max_batch"),
        ({"max_batch": -5}, "max_batch"),
        ({"max_batch": MAX_BATCH_LIMIT + 1}, "max_batch"),
        ({"max_batch": 10**100}, "max_batch"),
        ({"max_batch": True}, "max_batch"),
        ({"max_batch": 2.0}, "max_batch"),
        ({"max_batch": "10"}, "max_batch"),
        ({"max_batch": None}, "max_batch"),
        ({"handler": "not callable"}, "handler"),
        ({"handler": None}, "handler"),
        ({"task_type": ""}, "task_type"),
        ({"task_type": "has space"}, "task_type"),
        ({"task_type": None}, "task_type"),
        ({"task_type": "x" * 1000}, "task_type"),
    ],
)
def test_hostile_registrations_are_refused(
    qm: QueueManager, registry: HandlerRegistry, kwargs: dict[str, Any], field: str
) -> None:
    args: dict[str, Any] = {"task_type": "t", "handler": ok, "max_batch": 10, **kwargs}
    with pytest.raises(ValidationError) as caught:
        qm.register_batch_handler(args["task_type"], args["handler"], args["max_batch"])
    assert caught.value.field == field
    assert registry.types() == []


def test_a_type_has_one_kind_of_handler(qm: QueueManager, registry: HandlerRegistry) -> None:
    qm.register_handler("single", lambda data, db: True)
    with pytest.raises(ValidationError, match="already has a single handler"):
        qm.register_batch_handler("single", ok)
    qm.register_batch_handler("batched", ok, max_batch=5)
    with pytest.raises(ValidationError, match="already has a batch handler"):
        qm.register_handler("batched", lambda data, db: True)
    qm.register_batch_handler("batched", ok, max_batch=MAX_BATCH_LIMIT)  # same kind: replaced
    spec = registry.get_batch("batched")
    assert spec is not None and spec.max_batch == MAX_BATCH_LIMIT
    assert registry.get("batched") is None and registry.types() == ["batched", "single"]
    # a registered batch type's data is its own: not checked as a DB task
    qm.enqueue("default", "batched", {"operation": "drop", "collection": "events"})

    @batch_handler("decorated", max_batch=7, registry=registry)
    def decorated(items: Items, db_manager: BatchDBManager) -> list[bool]:
        return [True] * len(items)

    assert registry.get_batch("decorated") == registry.get_batch("decorated")
    assert registry.get_batch("decorated").max_batch == 7  # type: ignore[union-attr]


# -- real worker processes ------------------------------------------------------------


@pytest.fixture
def worker_env(redis_url: str, mongo_url: str, mongo_db: Database[Any]) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "MONGO_URL": mongo_url,
        "MONGO_DB": mongo_db.name,
        "LEDGER_PARTITIONS": str(PARTITIONS),
    }


@pytest.mark.slow
def test_ledger_worker_import_registers_batch_handlers(
    qm: QueueManager,
    redis: redis_py.Redis,
    mongo_db: Database[Any],
    worker_env: dict[str, str],
) -> None:
    ids = [qm.enqueue("default", "batch_insert", {"i": i}) for i in range(20)]
    bad = qm.enqueue("default", "batch_insert", {"i": 99, "fail": True})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "api",
            "worker",
            "--import",
            "tests.streams.batch_handlers",
            "--burst",
            "--max-attempts",
            "2",
            "--backoff-ms",
            "10",
        ],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=120,
        env=worker_env,
    )
    assert result.returncode == 0, result.stderr
    assert "succeeded" in result.stdout
    assert {status(qm, t)["status"] for t in ids} == {"completed"}
    assert status(qm, bad)["status"] == "failed"
    sizes = [int(n) for n in redis.lrange("test:batches", 0, -1)]
    # 21 items in few calls (a round reads 8 a partition), the failed one once more
    assert sum(sizes) == 22 and max(sizes) > 1, sizes
    assert sorted(d["_id"] for d in mongo_db.analytics.find()) == sorted(ids)


@pytest.mark.slow
def test_sigkilled_batch_worker_is_taken_over_and_effects_happen_once(
    qm: QueueManager,
    registry: HandlerRegistry,
    make_worker: MakeWorker,
    spawn_worker: Callable[..., subprocess.Popen[bytes]],
    mongo_db: Database[Any],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from .batch_handlers import batch_insert

    monkeypatch.setenv("REDIS_URL", redis_url)
    n = 120
    ids = [qm.enqueue("default", "batch_insert", {"i": i, "ms": 150}) for i in range(n)]
    proc = spawn_worker(handlers="tests.streams.batch_handlers")
    # kill while a call sleeps: its items were run (maybe inserted) but not settled
    eventually(
        lambda: qm.redis.llen("test:batches") >= 2,
        interval=0.02,
        message="the worker did not get into its second round",
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert pending(qm) > 0, "the kill should land mid-round"

    registry.register_batch("batch_insert", batch_insert, max_batch=50)
    make_worker(claim_idle_ms=500).run_until_idle(timeout=60)

    assert pending(qm) == 0
    assert {status(qm, t)["status"] for t in ids} == {"completed"}
    ran = Counter(int(i) for i in qm.redis.lrange("test:ran", 0, -1))
    assert set(ran) == set(range(n)) and max(ran.values()) == 2  # some ran twice
    docs = list(mongo_db.analytics.find())
    assert len(docs) == n and {d["_id"] for d in docs} == set(ids)  # each effect once
