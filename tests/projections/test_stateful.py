"""A hypothesis state machine over the real servers: random appends (with
repeats), projector rounds, projector crashes mid-round and rebuilds from the
log, checked against a plain model after every step.

Credit holds too: holds, captures (all or part), releases, and bursts of
holds and spends sent concurrently from threads (the model then learns the
order Redis chose from the log). Every account at every version has
``available >= 0`` and ``held`` equal to the sum of its open holds."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pymongo
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from redis.typing import KeyT, StreamIdT

from ledger.accounts import Account, apply
from ledger.errors import LedgerError
from ledger.events import Totals
from ledger.scores import credit_score
from projections.runner import all_projections, group_of, projector
from projections.store import connect
from streams import HandlerRegistry, QueueManager, StreamsConfig, keys
from streams.connection import connect as redis_connect
from streams.connection import ensure_groups
from tests.streamlog import account_histories

PARTITIONS = 2
USERS = ("ann", "ben", "cat")
PROJECTIONS = [p.name for p in all_projections()]


class LedgerMachine(RuleBasedStateMachine):
    redis_url: str
    mongo_url: str

    @initialize()
    def start(self) -> None:
        self.redis = redis_connect(self.redis_url)
        self.redis.flushall()
        self.mongo: pymongo.MongoClient[dict[str, Any]] = connect(self.mongo_url)
        self.db = self.mongo["stateful"]
        for name in ("balances", "credit_scores", "events", "checkpoints"):
            self.db[name].delete_many({})
        self.qm = QueueManager(
            config=StreamsConfig(redis_url=self.redis_url, partitions=PARTITIONS),
            client=self.redis,
            registry=HandlerRegistry(),
        )
        # model: every account's (balance, purchased, used, held) after each version
        self.history: dict[str, list[tuple[int, int, int, int]]] = {}
        self.open: dict[str, dict[str, int]] = {}  # open holds: user -> hold id -> credits
        self.crashes = 0

    def teardown(self) -> None:
        if hasattr(self, "qm"):
            try:
                self.drain()
                self.check_everything_projected()
            finally:
                self.qm.close()
                self.mongo.close()

    # -- appends -------------------------------------------------------------------
    def _append(self, call: Any, user: str, change: tuple[int, ...] | None) -> Any:
        before = self.history.get(user)
        try:
            appended = call()
        except LedgerError:
            return None
        if appended.duplicate:
            return None
        assert before is not None or change is None
        if change is None:
            self.history[user] = [(0, 0, 0, 0)]
            self.open[user] = {}
        else:
            b, p, u, h = before[-1]  # type: ignore[index]
            held = h + (change[3] if len(change) > 3 else 0)
            self.history[user].append((b + change[0], p + change[1], u + change[2], held))
        assert appended.version == len(self.history[user])
        assert appended.balance == self.history[user][-1][0]
        assert appended.held == self.history[user][-1][3]
        return appended

    @rule(user=st.sampled_from(USERS))
    def register(self, user: str) -> None:
        self._append(lambda: self.qm.register_user(user, f"{user}@example.com"), user, None)

    @rule(user=st.sampled_from(USERS), amount=st.integers(1, 500), tx=st.sampled_from("abcde"))
    def purchase(self, user: str, amount: int, tx: str) -> None:
        # a repeated transaction id is a duplicate (same amount) or refused (another amount)
        self._append(
            lambda: self.qm.purchase(user, amount, f"{tx}-{amount % 3}"), user, (amount, amount, 0)
        )

    @rule(user=st.sampled_from(USERS), amount=st.integers(1, 400), key=st.sampled_from("xyz"))
    def use(self, user: str, amount: int, key: str) -> None:
        self._append(
            lambda: self.qm.use(user, amount, idempotency_key=f"{key}{amount}"),
            user,
            (-amount, 0, amount),
        )

    @rule(user=st.sampled_from(USERS), delta=st.integers(-300, 300).filter(bool))
    def adjust(self, user: str, delta: int) -> None:
        self._append(lambda: self.qm.adjust(user, delta, "ops"), user, (delta, 0, 0))

    # -- holds ---------------------------------------------------------------------------
    @rule(user=st.sampled_from(USERS), amount=st.integers(1, 300), key=st.sampled_from("pq"))
    def hold(self, user: str, amount: int, key: str) -> None:
        done = self._append(
            lambda: self.qm.hold(user, amount, 600, idempotency_key=f"{key}{amount}"),
            user,
            (0, 0, 0, amount),
        )
        if done is not None:
            self.open[user][done.hold_id] = amount

    @precondition(lambda self: any(self.open.values()))
    @rule(data=st.data(), part=st.one_of(st.none(), st.integers(1, 300)))
    def capture(self, data: st.DataObject, part: int | None) -> None:
        user = data.draw(st.sampled_from(sorted(u for u, h in self.open.items() if h)))
        hold_id = data.draw(st.sampled_from(sorted(self.open[user])))
        credits = self.open[user][hold_id]
        taken = credits if part is None else part
        done = self._append(
            lambda: self.qm.capture(user, hold_id, part), user, (-taken, 0, taken, -credits)
        )
        assert (done is None) == (taken > credits)
        if done is not None:
            del self.open[user][hold_id]

    @precondition(lambda self: any(self.open.values()))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        user = data.draw(st.sampled_from(sorted(u for u, h in self.open.items() if h)))
        hold_id = data.draw(st.sampled_from(sorted(self.open[user])))
        credits = self.open[user].pop(hold_id)
        assert self._append(lambda: self.qm.release(user, hold_id), user, (0, 0, 0, -credits))
        assert self._append(lambda: self.qm.release(user, hold_id), user, (0, 0, 0, 0)) is None

    @precondition(lambda self: bool(self.history))
    @rule(data=st.data(), holds=st.integers(1, 4), uses=st.integers(1, 4))
    def concurrent_holds_and_spends(self, data: st.DataObject, holds: int, uses: int) -> None:
        """Holds, uses and negative adjustments of one account sent at once from threads."""
        user = data.draw(st.sampled_from(sorted(self.history)))
        amount = data.draw(st.integers(1, 150))

        def one(i: int) -> None:
            try:
                if i < holds:
                    self.qm.hold(user, amount, 600)
                elif i % 2:
                    self.qm.use(user, amount)
                else:
                    self.qm.adjust(user, -amount, "fee")
            except LedgerError:
                pass

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, range(holds + uses)))
        known = len(self.history[user])
        account: Account | None = None
        for event in account_histories(self.redis, PARTITIONS)[user]:
            account = apply(account, event)
            if event.version > known:
                a = event.after
                self.history[user].append((a.balance, a.purchased, a.used, a.held))
        assert account is not None
        self.open[user] = {h.hold_id: h.credits for h in account.holds.values()}

    # -- projectors ------------------------------------------------------------------
    def _projector(self, name: str, batch: int = 5) -> Any:
        [projection] = [p for p in all_projections() if p.name == name]
        return projector(
            self.redis,
            PARTITIONS,
            self.db,
            projection,
            batch=batch,
            claim_idle_ms=0,
            reclaim_every_ms=0,
        )

    @rule(name=st.sampled_from(PROJECTIONS), batch=st.integers(1, 8))
    def project_a_round(self, name: str, batch: int) -> None:
        self._projector(name, batch).step()

    @rule(name=st.sampled_from(PROJECTIONS))
    def crash_a_projector_mid_round(self, name: str) -> None:
        # a consumer reads a round (the entries become pending to it) and dies; one
        # XREADGROUP per partition, as projectors read (on a Cluster the partitions'
        # streams sit in different slots)
        self.crashes += 1
        ensure_groups(self.redis, PARTITIONS, f"proj:{name}")
        for p in keys.partitions(PARTITIONS):
            streams: dict[KeyT, StreamIdT] = {keys.stream(p, lv): ">" for lv in keys.LEVELS_DESC}
            self.redis.xreadgroup(f"proj:{name}", f"crashed-{self.crashes}", streams, count=3)

    @precondition(lambda self: bool(self.history))
    @rule(name=st.sampled_from(["balances", "credit_scores"]))
    def rebuild_from_the_log(self, name: str) -> None:
        self.db[name].delete_many({})
        for p in keys.partitions(PARTITIONS):
            for lv in keys.LEVELS_DESC:
                if self.redis.exists(keys.stream(p, lv)):
                    self.redis.xgroup_destroy(keys.stream(p, lv), f"proj:{name}")
        self._projector(name, 50).run_until_idle(timeout=30)

    def drain(self) -> None:
        for name in PROJECTIONS:
            self._projector(name, 50).run_until_idle(timeout=30)

    # -- invariants ----------------------------------------------------------------------
    @invariant()
    def redis_state_is_the_model(self) -> None:
        for user, states in self.history.items():
            state = self.qm.balance(user)
            assert state is not None
            assert state["version"] == len(states)
            assert (
                state["balance"],
                state["purchased_total"],
                state["used_total"],
                state["held"],
            ) == states[-1]
            assert state["balance"] >= 0
            assert state["available"] >= 0
            assert state["held"] == sum(self.open[user].values())
            assert {h.hold_id: h.amount for h in self.qm.open_holds(user)} == self.open[user]

    @invariant()
    def at_every_version_available_is_not_negative(self) -> None:
        for states in self.history.values():
            for balance, _, _, held in states:
                assert 0 <= held <= balance

    @invariant()
    def views_show_a_state_the_account_really_had(self) -> None:
        for doc in self.db.balances.find({}):
            states = self.history[doc["_id"]]
            assert 1 <= doc["version"] <= len(states)
            assert (
                doc["balance"],
                doc["purchased_total"],
                doc["used_total"],
                doc["held"],
            ) == states[doc["version"] - 1]
            assert doc["available"] == doc["balance"] - doc["held"]
        for doc in self.db.credit_scores.find({}):
            states = self.history[doc["_id"]]
            b, p, u, _ = states[doc["version"] - 1]
            assert doc["score"] == credit_score(
                Totals(balance=b, purchased=p, used=u), doc["version"]
            )
        for doc in self.db.events.find({}, {"user_id": 1, "version": 1, "balance_after": 1}):
            assert doc["balance_after"] == self.history[doc["user_id"]][doc["version"] - 1][0]

    def check_everything_projected(self) -> None:
        for user, states in self.history.items():
            doc = self.db.balances.find_one({"_id": user})
            assert doc is not None and doc["version"] == len(states)
            score = self.db.credit_scores.find_one({"_id": user})
            assert score is not None and score["version"] == len(states)
            assert self.db.events.count_documents({"user_id": user}) == len(states)
        pending = sum(
            self.redis.xpending(keys.stream(p, lv), group_of(proj))["pending"]
            for p in keys.partitions(PARTITIONS)
            for lv in keys.LEVELS_DESC
            for proj in all_projections()
        )
        assert pending == 0


def test_ledger_state_machine(redis_url: str, mongo_url: str) -> None:
    LedgerMachine.redis_url = redis_url
    LedgerMachine.mongo_url = mongo_url
    machine = LedgerMachine.TestCase
    machine.settings = settings(
        max_examples=12,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    machine().runTest()
