"""append.lua and ledger.commands.decide are twins: same decision, same event, same hash.

The script also deduplicates purchases by transaction id before deciding; the
test models that rule itself (decide is the pure decision, without memory).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.accounts import Account, apply
from ledger.commands import Command, Purchase, decide
from ledger.errors import LedgerError, TransactionReused
from streams import QueueManager
from tests.streamlog import account_histories

from ..strategies import QUICK, commands
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
