"""Task dependencies (``depends_on``, ``qm.chain``) and cancellation, on the real Redis.

A child waits until every parent completed; a parent that fails or is cancelled
cancels its dependents transitively; a diamond runs its join once; a crash
between a parent's end and its children's release loses nothing and releases
nothing twice (the outbox, ``streams.dependencies``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from ledger.errors import IdempotencyKeyReused, ValidationError
from streams import HandlerRegistry, QueueManager, Worker
from streams.connection import RedisClient
from streams.dependencies import MAX_PARENTS, Drained, Releaser, waiting_tasks

Ran = list[str]


@pytest.fixture
def ran(registry: HandlerRegistry) -> Ran:
    """Names of the ``step`` tasks in the order they ran; ``fail`` tasks always fail."""
    order: Ran = []

    def step(data: Mapping[str, Any], db_manager: Any) -> bool:
        order.append(data["name"])
        return True

    def fail(data: Mapping[str, Any], db_manager: Any) -> bool:
        raise RuntimeError(f"{data['name']} broke")

    registry.register("step", step)
    registry.register("fail", fail)
    return order


def task(qm: QueueManager, name: str, *, after: list[str] | None = None, kind: str = "step") -> str:
    return qm.enqueue("default", kind, {"name": name}, depends_on=after)


def status(qm: QueueManager, task_id: str) -> str:
    found = qm.get_task_status(task_id)
    assert found is not None
    return str(found["status"])


def test_a_child_waits_for_its_parent_then_runs_after_it(
    qm: QueueManager, make_worker: Callable[..., Worker], ran: Ran
) -> None:
    parent = task(qm, "parent")
    child = task(qm, "child", after=[parent])
    record = qm.get_task_status(child)
    assert record is not None
    assert record["status"] == "waiting"
    assert record["depends_on"] == [parent] and record["waiting_for"] == [parent]
    assert qm.get_queue_stats("default")["waiting"] == 1
    make_worker().run_until_idle()
    assert ran == ["parent", "child"]
    assert status(qm, child) == "completed"
    stats = qm.get_queue_stats("default")
    assert (stats["waiting"], stats["released"]) == (0, 1)


def test_a_completed_parent_counts_at_once(
    qm: QueueManager, make_worker: Callable[..., Worker], ran: Ran
) -> None:
    parent = task(qm, "parent")
    make_worker().run_until_idle()
    child = qm.submit("default", "step", {"name": "child"}, depends_on=[parent])
    assert child.status == "queued"
    make_worker().run_until_idle()
    assert ran == ["parent", "child"]


def test_a_diamond_runs_its_join_once_after_both_branches(
    qm: QueueManager, make_worker: Callable[..., Worker], ran: Ran
) -> None:
    a = task(qm, "a")
    b = task(qm, "b", after=[a])
    c = task(qm, "c", after=[a])
    d = task(qm, "d", after=[b, c])
    workers = [make_worker(), make_worker()]
    for _ in range(20):
        for w in workers:
            w.step(block=False)
    for w in workers:
        w.run_until_idle()
    assert ran[0] == "a" and sorted(ran[1:3]) == ["b", "c"] and ran[3:] == ["d"]
    assert status(qm, d) == "completed"


def test_a_failed_parent_cancels_its_dependents_transitively(
    qm: QueueManager, make_worker: Callable[..., Worker], ran: Ran
) -> None:
    parent = task(qm, "parent", kind="fail")
    child = task(qm, "child", after=[parent])
    grandchild = task(qm, "grandchild", after=[child])
    make_worker().run_until_idle()
    assert ran == []
    assert status(qm, parent) == "failed"
    record = qm.get_task_status(child)
    assert record is not None and record["status"] == "cancelled"
    assert parent in record["last_error"] and "failed" in record["last_error"]
    gc = qm.get_task_status(grandchild)
    assert gc is not None and gc["status"] == "cancelled" and child in gc["last_error"]
    stats = qm.get_queue_stats("default")
    assert (stats["waiting"], stats["cancelled"], stats["dependents_cancelled"]) == (0, 2, 2)


def test_requeueing_a_failed_parent_does_not_revive_cancelled_children(
    qm: QueueManager, make_worker: Callable[..., Worker], ran: Ran, registry: HandlerRegistry
) -> None:
    parent = task(qm, "parent", kind="flaky")
    child = task(qm, "child", after=[parent])
    attempts: list[int] = []

    def flaky(data: Mapping[str, Any], db_manager: Any) -> bool:
        attempts.append(1)
        return len(attempts) > 3  # fails its 3 attempts, then succeeds once requeued

    registry.register("flaky", flaky)
    make_worker().run_until_idle()
    assert status(qm, parent) == "failed" and status(qm, child) == "cancelled"
    (dead,) = qm.dead_letters()
    qm.requeue(dead.id)
    make_worker().run_until_idle()
    assert status(qm, parent) == "completed"
    assert status(qm, child) == "cancelled" and ran == []


def test_a_parent_that_failed_before_cancels_the_new_child_at_once(
    qm: QueueManager, make_worker: Callable[..., Worker], ran: Ran
) -> None:
    parent = task(qm, "parent", kind="fail")
    make_worker().run_until_idle()
    child = qm.submit("default", "step", {"name": "child"}, depends_on=[parent])
    assert child.status == "cancelled"
    record = qm.get_task_status(child.task_id)
    assert record is not None and parent in record["last_error"]


def test_a_chain_runs_in_order_and_a_failing_step_cancels_the_rest(
    qm: QueueManager, make_worker: Callable[..., Worker], ran: Ran
) -> None:
    ids = qm.chain(
        [
            {"queue_name": "default", "task_type": "step", "task_data": {"name": n}}
            for n in ("one", "two", "three")
        ]
    )
    make_worker().run_until_idle()
    assert ran == ["one", "two", "three"]
    broken = qm.chain(
        [
            {"queue_name": "default", "task_type": "step", "task_data": {"name": "four"}},
            {"queue_name": "default", "task_type": "fail", "task_data": {"name": "five"}},
            {"queue_name": "default", "task_type": "step", "task_data": {"name": "six"}},
        ]
    )
    make_worker().run_until_idle()
    assert ran == ["one", "two", "three", "four"]
    assert [status(qm, t) for t in [*ids, *broken]] == [
        *["completed"] * 4,
        "failed",
        "cancelled",
    ]


def test_cancel_queued_scheduled_and_waiting_tasks_never_run(
    qm: QueueManager, make_worker: Callable[..., Worker], ran: Ran
) -> None:
    queued = task(qm, "queued")
    scheduled = qm.enqueue("default", "step", {"name": "scheduled"}, delay=0.2)
    blocker = task(qm, "blocker")
    waiting = task(qm, "waiting", after=[blocker])
    downstream = task(qm, "downstream", after=[waiting])
    assert [qm.cancel(t) for t in (queued, scheduled, waiting)] == ["cancelled"] * 3
    assert qm.cancel(queued) == "cancelled"  # already: reported as it is, nothing changes
    assert status(qm, downstream) == "cancelled"  # through the cancelled one
    w = make_worker()
    w.run_until_idle()
    assert ran == ["blocker"]
    assert qm.cancel(blocker) == "completed"
    assert qm.cancel("no-such-task") == "missing"
    assert qm.cancel("x" * 500) == "missing"
    stats = qm.get_queue_stats("default")
    assert stats["cancelled"] == 4 and stats["waiting"] == 0
    assert status(qm, queued) == "cancelled"  # its entry was acknowledged, not run


def test_a_waiting_task_is_listed_with_what_it_waits_for(
    qm: QueueManager, redis: RedisClient, ran: Ran
) -> None:
    a, b = task(qm, "a"), task(qm, "b")
    child = task(qm, "child", after=[a, b])
    (listed,) = waiting_tasks(redis, qm.config.partitions)
    assert listed["task_id"] == child
    assert sorted(listed["depends_on"]) == sorted([a, b])
    assert listed["waiting_for"] == sorted([a, b])


def test_an_idempotent_repeat_returns_the_same_task_and_a_different_parent_is_refused(
    qm: QueueManager, ran: Ran
) -> None:
    a, b = task(qm, "a"), task(qm, "b")
    first = qm.submit("default", "step", {"name": "c"}, idempotency_key="k1", depends_on=[a])
    again = qm.submit("default", "step", {"name": "c"}, idempotency_key="k1", depends_on=[a])
    assert again.task_id == first.task_id and again.status == "waiting"
    with pytest.raises(IdempotencyKeyReused):
        qm.submit("default", "step", {"name": "c"}, idempotency_key="k1", depends_on=[b])


@pytest.mark.parametrize(
    ("depends_on", "message"),
    [
        ("abc", "list of task ids"),
        ({"a": 1}, "list of task ids"),
        ([1], "depends_on[0]"),
        ([None], "depends_on[0]"),
        (["a,b"], "depends_on[0]"),
        (["$where"], "depends_on[0]"),
        ([""], "depends_on[0]"),
        (["x" * 129], "depends_on[0]"),
        (["ok-id", "a b"], "depends_on[1]"),
        ([f"t{i}" for i in range(MAX_PARENTS + 1)], "at most 100"),
        (["never-enqueued"], "unknown task"),
    ],
)
def test_hostile_depends_on_is_refused_and_writes_nothing(
    qm: QueueManager, redis: RedisClient, depends_on: Any, message: str
) -> None:
    qm._ready()  # the deployment's marker (ledger:meta) is written on first use
    before = redis.dbsize()
    with pytest.raises(ValidationError) as err:
        qm.enqueue("default", "step", {"name": "x"}, depends_on=depends_on)
    assert err.value.field == "depends_on" and message in str(err.value)
    assert redis.dbsize() == before


def test_a_task_cannot_depend_on_itself_or_on_an_id_not_yet_known(
    qm: QueueManager, redis: RedisClient
) -> None:
    """Parents must exist when the child is enqueued, so no cycle can form: an id
    derived from the child's own Idempotency-Key does not exist yet."""
    import uuid

    from streams.queue_manager import TASK_ID_NAMESPACE

    own = str(uuid.uuid5(TASK_ID_NAMESPACE, "self"))
    with pytest.raises(ValidationError, match="unknown task"):
        qm.enqueue("default", "step", {}, idempotency_key="self", depends_on=[own])
    assert qm.get_task_status(own) is None


def test_a_release_crashed_midway_is_finished_by_the_sweep_and_runs_children_once(
    qm: QueueManager, make_worker: Callable[..., Worker], ran: Ran, redis: RedisClient
) -> None:
    """A process that took a parent's outbox entry and died before telling (or
    before acknowledging) leaves it pending; a later drain with ``min_idle_ms``
    takes it over, and telling twice releases nothing twice."""
    parent = task(qm, "parent")
    children = [task(qm, f"child{i}", after=[parent]) for i in range(3)]
    w = make_worker()
    real_release = w._release
    w._release = lambda parts, min_idle_ms=-1: None  # type: ignore[method-assign]
    w.run_until_idle()  # the parent completes; its outbox entry is written, not read
    assert ran == ["parent"] and all(status(qm, c) == "waiting" for c in children)
    dead = Releaser(redis, qm.scripts, qm.config.partitions, "doomed")
    entries = dead._take(list(range_parts(qm)), -1)
    assert len(entries) == 1  # taken, then the process "dies": pending for "doomed"
    assert Releaser(redis, qm.scripts, qm.config.partitions, "other").drain().entries == 0
    dead._tell(entries, Drained())  # told, not acknowledged
    assert all(status(qm, c) == "queued" for c in children)
    rescued = Releaser(redis, qm.scripts, qm.config.partitions, "other").drain(min_idle_ms=0)
    assert (rescued.entries, rescued.released) == (1, 0)  # told again: nothing twice
    w._release = real_release  # type: ignore[method-assign]
    w.run_until_idle()
    assert sorted(ran) == sorted(["parent", "child0", "child1", "child2"])
    assert qm.get_queue_stats("default")["released"] == 3


def range_parts(qm: QueueManager) -> Any:
    from streams import keys

    return keys.partitions(qm.config.partitions)
