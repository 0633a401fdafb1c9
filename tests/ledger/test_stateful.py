"""A stateful test of the ledger against an independent model.

Random registrations (including repeats), purchases, uses and adjustments
(including overdrafts, over-limit amounts and unknown users) go through
``parse`` then ``decide``/``apply``. The model is a dict of plain ints; after
every step the accounts must agree with it, never be negative, have dense
versions, verify as a chain, and equal the fold of their whole history.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ledger.accounts import Account, apply, fold
from ledger.chain import verify
from ledger.commands import decide, parse
from ledger.errors import DuplicateUser, InsufficientCredits, LimitExceeded, UnknownAccount
from ledger.events import Event
from ledger.money import MAX_CREDITS
from tests import strategies as s

USERS = ["alice", "bob", "carol@example.org", "d.e:f-1"]
users = st.sampled_from(USERS)
small = st.integers(1, 200)
# Mostly small amounts so spends succeed; some huge ones to reach the limits.
amounts = st.one_of(small, small, small, st.integers(1, MAX_CREDITS), st.just(MAX_CREDITS))


@dataclass
class Model:
    """What an account should hold, kept by plain arithmetic."""

    balance: int = 0
    purchased: int = 0
    used: int = 0
    events: int = 1


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, Model] = {}
        self.accounts: dict[str, Account] = {}
        self.log: list[Event] = []
        self.clock = 0

    @initialize(start=st.integers(0, 2**40), email=s.emails(), funds=small)
    def open_one_account(self, start: int, email: str, funds: int) -> None:
        """Start with one funded account so early steps have something to spend."""
        self.clock = start
        self.register(USERS[0], email)
        self.purchase(USERS[0], funds, "opening")

    def run(self, kind: str, body: dict[str, object]) -> Event | None:
        """parse -> decide -> apply, the way the append path runs a request."""
        self.clock += 1
        command = parse(kind, body)
        account = self.accounts.get(command.user_id)
        decided = decide(account, command, at_ms=self.clock)
        self.accounts[command.user_id] = apply(account, decided)
        self.log.append(decided)
        event(f"appended: {kind}")
        return decided

    def refused(self, kind: str, body: dict[str, object], error: type[Exception]) -> None:
        before = dict(self.accounts), len(self.log)
        try:
            self.run(kind, body)
        except error:
            event(f"refused: {error.__name__}")
        else:
            raise AssertionError(f"{kind} {body} should raise {error.__name__}")
        assert (dict(self.accounts), len(self.log)) == before

    # --- rules -----------------------------------------------------------------

    @rule(user=users, email=s.emails())
    def register(self, user: str, email: str) -> None:
        body: dict[str, object] = {"user_id": user, "email": email}
        if user in self.model:
            self.refused("register_user", body, DuplicateUser)
            return
        self.run("register_user", body)
        self.model[user] = Model()

    @rule(user=users, amount=amounts, tx=s.transaction_ids())
    def purchase(self, user: str, amount: int, tx: str) -> None:
        body: dict[str, object] = {"user_id": user, "amount": amount, "transaction_id": tx}
        m = self.model.get(user)
        if m is None:
            self.refused("purchase", body, UnknownAccount)
        elif m.balance + amount > MAX_CREDITS or m.purchased + amount > MAX_CREDITS:
            self.refused("purchase", body, LimitExceeded)
        else:
            self.run("purchase", body)
            m.balance += amount
            m.purchased += amount
            m.events += 1

    @rule(user=users, amount=amounts, everything=st.booleans())
    def use(self, user: str, amount: int, everything: bool) -> None:
        m = self.model.get(user)
        if everything and m is not None and m.balance > 0:
            amount = m.balance
        body: dict[str, object] = {"user_id": user, "amount": amount}
        if m is None:
            self.refused("use", body, UnknownAccount)
        elif amount > m.balance:
            self.refused("use", body, InsufficientCredits)
        elif m.used + amount > MAX_CREDITS:
            self.refused("use", body, LimitExceeded)
        else:
            self.run("use", body)
            m.balance -= amount
            m.used += amount
            m.events += 1

    @rule(user=users, amount=amounts, negative=st.booleans())
    def adjust(self, user: str, amount: int, negative: bool) -> None:
        delta = -amount if negative else amount
        body: dict[str, object] = {"user_id": user, "delta": delta, "reason": "ops"}
        m = self.model.get(user)
        if m is None:
            self.refused("adjust", body, UnknownAccount)
        elif m.balance + delta < 0:
            self.refused("adjust", body, InsufficientCredits)
        elif m.balance + delta > MAX_CREDITS:
            self.refused("adjust", body, LimitExceeded)
        else:
            self.run("adjust", body)
            m.balance += delta
            m.events += 1

    # --- invariants ------------------------------------------------------------

    @invariant()
    def accounts_match_the_model(self) -> None:
        assert set(self.accounts) == set(self.model)
        for user, account in self.accounts.items():
            m = self.model[user]
            assert account.totals.balance >= 0
            assert (
                account.totals.balance,
                account.totals.purchased,
                account.totals.used,
                account.version,
            ) == (m.balance, m.purchased, m.used, m.events)

    @invariant()
    def histories_are_dense_verified_and_fold_to_the_accounts(self) -> None:
        for user, account in self.accounts.items():
            history = [e for e in self.log if e.user_id == user]
            assert [e.version for e in history] == list(range(1, len(history) + 1))
            assert verify(history) is None
            assert fold(history) == account


LedgerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=50, deadline=None)
TestLedger = LedgerMachine.TestCase
