"""append.lua and ledger.commands.decide are twins: same decision, same event, same hash.

Holds too: holds, captures (all or part), releases and early expiries, with a
small open-hold limit so ``TooManyHolds`` is reached; events carry the held
total, and the account state in Redis (held, open holds) matches the fold.

The script also deduplicates purchases by transaction id before deciding; the
test models that rule itself (decide is the pure decision, without memory).
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ledger.accounts import Account, apply, fold
from ledger.commands import Command, HoldLimits, Purchase, decide
from ledger.errors import LedgerError, TransactionReused
from ledger.events import Event
from ledger.tasks import Priority
from streams import Appended, QueueManager
from tests.streamlog import account_histories

from ..strategies import QUICK, commands, hold_commands
from .conftest import PARTITIONS

USERS = ["ann", "b.e-n", "c:1"]  # reasons and emails carry the multi-byte text


@settings(QUICK, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(commands(USERS), min_size=1, max_size=25))
def test_script_and_python_decide_alike(qm: QueueManager, cmds: list[Command]) -> None:
    qm.redis.flushall()  # the fixture is shared by examples: start each from nothing
    model: dict[str, Account] = {}
    purchases: dict[tuple[str, str], tuple[Purchase, str]] = {}  # the script's dedup, modelled
    for cmd in cmds:
        if isinstance(cmd, Purchase) and (cmd.user_id, cmd.transaction_id) in purchases:
            first, first_id = purchases[cmd.user_id, cmd.transaction_id]
            if first == cmd:
                assert qm.append(cmd).event_id == first_id
            else:
                with pytest.raises(TransactionReused):
                    qm.append(cmd)
            continue
        try:
            appended = qm.append(cmd)
        except LedgerError as lua_refusal:
            # Python must refuse it for the same reason.
            try:
                decide(model.get(cmd.user_id), cmd, at_ms=0)
            except LedgerError as py_refusal:
                assert type(py_refusal) is type(lua_refusal)
                continue
            raise AssertionError(f"script refused {cmd} but decide accepted it") from None
        lua_event = account_histories(qm.redis, PARTITIONS)[cmd.user_id][-1]
        assert lua_event.version == appended.version
        py_event = decide(model.get(cmd.user_id), cmd, at_ms=lua_event.at_ms)
        assert py_event == lua_event
        model[cmd.user_id] = apply(model.get(cmd.user_id), py_event)
        if isinstance(cmd, Purchase):
            purchases[cmd.user_id, cmd.transaction_id] = (cmd, appended.event_id)
        assert appended.balance == model[cmd.user_id].totals.balance


@settings(QUICK, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(commands(USERS), min_size=1, max_size=40))
def test_batched_script_and_python_decide_alike(qm: QueueManager, cmds: list[Command]) -> None:
    """One append_batch: many events of one account in one script call, each
    seeing the ones before it (the account state the script carries along)."""
    qm.redis.flushall()
    results = qm.append_batch([(cmd, Priority.NORMAL, None) for cmd in cmds])
    histories = account_histories(qm.redis, PARTITIONS)
    model: dict[str, Account] = {}
    events: dict[str, list[Event]] = {}
    purchases: dict[tuple[str, str], tuple[Purchase, str]] = {}
    for cmd, result in zip(cmds, results, strict=True):
        if isinstance(cmd, Purchase) and (cmd.user_id, cmd.transaction_id) in purchases:
            first, first_id = purchases[cmd.user_id, cmd.transaction_id]
            if first == cmd:
                assert isinstance(result, Appended) and result.duplicate
                assert result.event_id == first_id
            else:
                assert isinstance(result, TransactionReused)
            continue
        mine = events.setdefault(cmd.user_id, [])
        try:
            at_ms = histories[cmd.user_id][len(mine)].at_ms if isinstance(result, Appended) else 0
            py_event = decide(model.get(cmd.user_id), cmd, at_ms=at_ms)
        except LedgerError as py_refusal:
            assert type(result) is type(py_refusal)
            continue
        assert isinstance(result, Appended), f"script refused {cmd} but decide accepted it"
        assert py_event == histories[cmd.user_id][len(mine)]
        mine.append(py_event)
        model[cmd.user_id] = apply(model.get(cmd.user_id), py_event)
        assert (result.version, result.balance) == (
            py_event.version,
            model[cmd.user_id].totals.balance,
        )
        if isinstance(cmd, Purchase):
            purchases[cmd.user_id, cmd.transaction_id] = (cmd, result.event_id)
    assert {u: len(h) for u, h in histories.items()} == {u: len(e) for u, e in events.items() if e}
    for user, account in model.items():
        state = qm.balance(user)
        assert state is not None
        assert (state["version"], state["balance"]) == (account.version, account.totals.balance)
        assert state["head"] == account.head
        assert (state["purchased_total"], state["used_total"]) == (
            account.totals.purchased,
            account.totals.used,
        )


HOLD_LIMITS = HoldLimits(max_open=2)


@settings(QUICK, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            commands(USERS, register=False),
            hold_commands(USERS, holds_per_user=3),
            *[hold_commands(USERS[:2], holds_per_user=2, hold_amounts=st.integers(1, 40))] * 4,
        ),
        min_size=1,
        max_size=40,
    )
)
def test_script_and_python_decide_holds_alike(qm: QueueManager, cmds: list[Command]) -> None:
    qm.redis.flushall()
    small = QueueManager(config=replace(qm.config, max_open_holds=2), client=qm.redis)
    model: dict[str, Account] = {}
    for user in USERS[:2]:  # the third stays unregistered
        small.register_user(user, f"{user.replace(':', '')}@example.com")
        small.purchase(user, 100, "opening")
    for user, history in account_histories(qm.redis, PARTITIONS).items():
        opened = fold(history)
        assert opened is not None
        model[user] = opened
    for cmd in cmds:
        if isinstance(cmd, Purchase):
            cmd = replace(cmd, transaction_id=f"t{time.monotonic_ns()}")  # no dedup to model
        try:
            appended = small.append(cmd)
        except LedgerError as lua_refusal:
            try:
                decide(
                    model.get(cmd.user_id),
                    cmd,
                    at_ms=int(time.time() * 1000),
                    limits=HOLD_LIMITS,
                )
            except LedgerError as py_refusal:
                assert type(py_refusal) is type(lua_refusal), (py_refusal, lua_refusal)
                event(f"refused: {lua_refusal.code}")
                continue
            raise AssertionError(f"script refused {cmd}, decide accepted") from None
        lua_event = account_histories(qm.redis, PARTITIONS)[cmd.user_id][-1]
        py_event = decide(model.get(cmd.user_id), cmd, at_ms=lua_event.at_ms, limits=HOLD_LIMITS)
        assert py_event == lua_event
        event(f"appended: {py_event.kind}")
        account = apply(model.get(cmd.user_id), py_event)
        model[cmd.user_id] = account
        assert (appended.version, appended.balance, appended.held) == (
            account.version,
            account.totals.balance,
            account.totals.held,
        )
        if py_event.kind in ("credits_held", "hold_captured", "hold_released"):
            assert appended.hold_id == py_event.ref
    for user, account in model.items():
        state = small.balance(user)
        assert state is not None
        assert (state["balance"], state["held"], state["head"]) == (
            account.totals.balance,
            account.totals.held,
            account.head,
        )
        assert {h.hold_id: h.amount for h in small.open_holds(user)} == {
            h.hold_id: h.credits for h in account.holds.values()
        }
