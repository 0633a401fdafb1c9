"""A hypothesis state machine over task dependencies on the real Redis: random
enqueues with ``depends_on`` (tasks that complete or fail), cancellations, worker
rounds and lost outbox reads, checked against a model after every step.

What must hold: no task runs before all its parents completed; no task runs
twice; a cancelled task never runs; once drained, every task ended exactly once
and its end is the one the model predicts (completed, failed, or cancelled
because it was cancelled or a parent did not complete)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from streams import HandlerRegistry, QueueManager, RetryPolicy, StreamsConfig, Worker
from streams.connection import connect as redis_connect
from streams.dependencies import Releaser

PARTITIONS = 3


class DependencyMachine(RuleBasedStateMachine):
    redis_url: str

    @initialize()
    def start(self) -> None:
        self.redis = redis_connect(self.redis_url)
        self.redis.flushall()
        self.ran: list[str] = []
        registry = HandlerRegistry()

        def ok(data: Mapping[str, Any], db_manager: Any) -> bool:
            self.ran.append(data["name"])
            return True

        def boom(data: Mapping[str, Any], db_manager: Any) -> bool:
            self.ran.append(data["name"])
            return False

        registry.register("ok", ok)
        registry.register("boom", boom)
        self.qm = QueueManager(
            config=StreamsConfig(redis_url=self.redis_url, partitions=PARTITIONS),
            client=self.redis,
            registry=registry,
        )
        self.worker: Worker = self.qm.worker(
            retry=RetryPolicy(max_attempts=1), claim_idle_ms=50, reclaim_every_ms=10
        )
        # model: name -> (task id, kind, parents' names); cancels that took effect
        self.tasks: dict[str, tuple[str, str, tuple[str, ...]]] = {}
        self.by_id: dict[str, str] = {}
        self.cancelled: set[str] = set()

    def teardown(self) -> None:
        if hasattr(self, "qm"):
            try:
                self.worker.run_until_idle(timeout=30)
                self.check_every_task_ended_as_the_model_says()
            finally:
                self.qm.close()

    # -- rules -------------------------------------------------------------------------
    @rule(
        kind=st.sampled_from(["ok", "ok", "ok", "boom"]),
        picks=st.lists(st.integers(min_value=0, max_value=10_000), max_size=3),
    )
    def enqueue(self, kind: str, picks: list[int]) -> None:
        names = sorted(self.tasks)
        parents = tuple(sorted({names[i % len(names)] for i in picks})) if names else ()
        name = f"t{len(self.tasks)}"
        done = self.qm.submit(
            "default",
            kind,
            {"name": name},
            depends_on=[self.tasks[p][0] for p in parents] or None,
        )
        self.tasks[name] = (done.task_id, kind, parents)
        self.by_id[done.task_id] = name
        expected = "waiting" if parents else "queued"
        ends = [self._status(p) for p in parents]
        if done.status == "queued" and parents:  # every parent had completed
            assert set(ends) == {"completed"}
        elif done.status == "cancelled":  # a parent had failed or was cancelled
            assert {"failed", "cancelled"} & set(ends)
        else:
            assert done.status == expected

    @precondition(lambda self: bool(self.tasks))
    @rule(i=st.integers(min_value=0, max_value=10_000))
    def cancel(self, i: int) -> None:
        name = sorted(self.tasks)[i % len(self.tasks)]
        before = self._status(name)
        outcome = self.qm.cancel(self.tasks[name][0])
        if before in ("waiting", "queued", "scheduled"):
            assert outcome == "cancelled"
            self.cancelled.add(name)
        else:
            assert outcome == before  # refused (or cancelled already): nothing changes
        assert self._status(name) == ("cancelled" if outcome == "cancelled" else before)

    @rule()
    def worker_round(self) -> None:
        self.worker.step(block=False)

    @rule()
    def outbox_read_then_lost(self) -> None:
        """A process takes outbox entries and dies before telling anyone: a later
        sweep must take them over (``min_idle_ms``)."""
        Releaser(self.redis, self.qm.scripts, PARTITIONS, "doomed")._take(
            list(self.worker._parts), -1
        )

    # -- invariants --------------------------------------------------------------------
    @invariant()
    def nothing_runs_early_twice_or_after_a_cancel(self) -> None:
        if not hasattr(self, "qm"):
            return
        assert len(self.ran) == len(set(self.ran)), "a task ran twice"
        seen: set[str] = set()
        for name in self.ran:
            _, _, parents = self.tasks[name]
            for parent in parents:
                assert parent in seen and self.tasks[parent][1] == "ok", (name, parent)
            assert name not in self.cancelled
            seen.add(name)

    def check_every_task_ended_as_the_model_says(self) -> None:
        self.worker._release(list(self.worker._parts), 0)  # what "doomed" took
        self.worker.run_until_idle(timeout=30)
        expected: dict[str, str] = {}
        for name in sorted(self.tasks, key=lambda n: int(n[1:])):  # parents come first
            _, kind, parents = self.tasks[name]
            if name in self.cancelled or any(expected[p] != "completed" for p in parents):
                expected[name] = "cancelled"
            else:
                expected[name] = "completed" if kind == "ok" else "failed"
        actual = {name: self._status(name) for name in self.tasks}
        assert actual == expected
        assert sorted(self.ran) == sorted(n for n, s in expected.items() if s != "cancelled")
        stats = self.qm.get_queue_stats("default")
        assert stats["waiting"] == 0

    def _status(self, name: str) -> str:
        record = self.qm.get_task_status(self.tasks[name][0])
        assert record is not None
        return str(record["status"])


def test_dependency_state_machine(redis_url: str) -> None:
    DependencyMachine.redis_url = redis_url
    machine = DependencyMachine.TestCase
    machine.settings = settings(
        max_examples=25,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    machine().runTest()
