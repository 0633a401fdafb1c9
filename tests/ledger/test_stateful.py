"""A stateful test of the ledger against an independent model.

Random registrations (including repeats), purchases, uses and adjustments
(including overdrafts, over-limit amounts and unknown users) go through
``parse`` then ``decide``/``apply``. The model is a dict of plain ints; after
every step the accounts must agree with it, never be negative, have dense
versions, verify as a chain, and equal the fold of their whole history.

Holds: holds (with a small open-hold limit), captures of all or part,
releases, expiries (the clock jumps forward) and spends interleaved with them
(uses and negative adjustments racing open holds for the same credits), with
ids of unknown, closed, expired and other accounts' holds. The property: for
every account at every version, ``available >= 0`` and ``held`` is the sum of
the holds open at that version.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ledger.accounts import Account, apply, fold
from ledger.chain import verify
from ledger.commands import Command, Expire, HoldLimits, decide, parse
from ledger.errors import (
    DuplicateUser,
    HoldNotDue,
    HoldNotOpen,
    InsufficientCredits,
    LimitExceeded,
    TooManyHolds,
    UnknownAccount,
    UnknownHold,
    ValidationError,
)
from ledger.events import CreditsHeld, Event, HoldCaptured, HoldExpired, HoldReleased
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
    holds: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Open holds: id -> (credits, expires_at_ms)."""
    made: int = 0

    @property
    def held(self) -> int:
        return sum(credits for credits, _ in self.holds.values())

    @property
    def available(self) -> int:
        return self.balance - self.held


LIMITS = HoldLimits(max_open=3, max_expiry_s=100)


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

    def run(self, kind: str, body: dict[str, object] | Command) -> Event | None:
        """parse -> decide -> apply, the way the append path runs a request."""
        self.clock += 1
        command = parse(kind, body) if isinstance(body, dict) else body
        account = self.accounts.get(command.user_id)
        decided = decide(account, command, at_ms=self.clock, limits=LIMITS)
        self.accounts[command.user_id] = apply(account, decided)
        self.log.append(decided)
        event(f"appended: {kind}")
        return decided

    def refused(self, kind: str, body: dict[str, object] | Command, error: type[Exception]) -> None:
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
        if everything and m is not None and m.available > 0:
            body["amount"] = amount = m.available
        if m is None:
            self.refused("use", body, UnknownAccount)
        elif amount > m.available:
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
        elif m.available + delta < 0:
            self.refused("adjust", body, InsufficientCredits)
        elif m.balance + delta > MAX_CREDITS:
            self.refused("adjust", body, LimitExceeded)
        else:
            self.run("adjust", body)
            m.balance += delta
            m.events += 1

    # --- holds -------------------------------------------------------------------

    def _hold_id(self, user: str, number: int, owner: str | None) -> str:
        return f"{owner or user}:h{number}"

    def _closing_refusal(self, user: str, hold_id: str, expiring: bool) -> type[Exception] | None:
        """The refusal the model expects for closing ``hold_id`` on ``user`` now, or None."""
        m = self.model.get(user)
        if m is None:
            return UnknownAccount
        prefix = f"{user}:h"
        number = hold_id[len(prefix) :] if hold_id.startswith(prefix) else ""
        if not number.isdigit() or not 1 <= int(number) <= m.made:
            return UnknownHold
        if hold_id not in m.holds:
            return HoldNotOpen
        at = self.clock + 1  # the time the command will be decided at
        expires = m.holds[hold_id][1]
        if expiring and at < expires:
            return HoldNotDue
        if not expiring and at >= expires:
            return HoldNotOpen
        return None

    @rule(
        user=st.one_of(st.just(USERS[0]), users),
        amount=st.one_of(st.integers(1, 40), amounts),
        expires=st.integers(1, 100),
        reason=s.reasons(),
    )
    def hold(self, user: str, amount: int, expires: int, reason: str) -> None:
        body: dict[str, object] = {
            "user_id": user,
            "amount": amount,
            "expires_in_s": expires,
            "reason": reason,
        }
        m = self.model.get(user)
        if m is None:
            self.refused("hold", body, UnknownAccount)
        elif len(m.holds) >= LIMITS.max_open:
            self.refused("hold", body, TooManyHolds)
        elif amount > m.available:
            self.refused("hold", body, InsufficientCredits)
        else:
            made = self.run("hold", body)
            assert isinstance(made, CreditsHeld)
            m.made += 1
            assert made.hold_id == f"{user}:h{m.made}"
            assert made.expires_at_ms == self.clock + expires * 1000
            m.holds[made.hold_id] = (amount, made.expires_at_ms)
            m.events += 1

    @rule(user=users, expires=st.integers(101, 10**6))
    def hold_too_long(self, user: str, expires: int) -> None:
        body = {"user_id": user, "amount": 1, "expires_in_s": expires}
        self.refused("hold", body, ValidationError)

    @rule(
        user=users,
        number=st.integers(1, 6),
        owner=st.one_of(st.none(), st.none(), users),
        amount=st.one_of(st.none(), st.integers(1, 250)),
    )
    def capture(self, user: str, number: int, owner: str | None, amount: int | None) -> None:
        hold_id = self._hold_id(user, number, owner)
        body: dict[str, object] = {"user_id": user, "hold_id": hold_id}
        if amount is not None:
            body["amount"] = amount
        refusal = self._closing_refusal(user, hold_id, expiring=False)
        m = self.model.get(user)
        if refusal is None and m is not None:
            credits = m.holds[hold_id][0]
            taken = credits if amount is None else amount
            if taken > credits:
                refusal = ValidationError
            elif m.used + taken > MAX_CREDITS:
                refusal = LimitExceeded
        if refusal is not None:
            self.refused("capture", body, refusal)
            return
        assert m is not None
        done = self.run("capture", body)
        assert isinstance(done, HoldCaptured) and done.released == credits - taken
        del m.holds[hold_id]
        m.balance -= taken
        m.used += taken
        m.events += 1

    @rule(user=users, number=st.integers(1, 6), owner=st.one_of(st.none(), users))
    def release(self, user: str, number: int, owner: str | None) -> None:
        hold_id = self._hold_id(user, number, owner)
        body: dict[str, object] = {"user_id": user, "hold_id": hold_id}
        refusal = self._closing_refusal(user, hold_id, expiring=False)
        if refusal is not None:
            self.refused("release", body, refusal)
            return
        assert isinstance(self.run("release", body), HoldReleased)
        del self.model[user].holds[hold_id]
        self.model[user].events += 1

    def _open_hold(self, data: st.DataObject) -> tuple[str, int]:
        """(user, hold number) of a hold the model has open, drawn from ``data``."""
        hold_id = data.draw(
            st.sampled_from(sorted(h for m in self.model.values() for h in m.holds))
        )
        user, number = hold_id.rsplit(":h", 1)
        return user, int(number)

    @precondition(lambda self: any(m.holds for m in self.model.values()))
    @rule(data=st.data(), part=st.one_of(st.none(), st.integers(1, 200)))
    def capture_an_open_hold(self, data: st.DataObject, part: int | None) -> None:
        user, number = self._open_hold(data)
        self.capture(user, number, None, part)

    @precondition(lambda self: any(m.holds for m in self.model.values()))
    @rule(data=st.data())
    def release_an_open_hold(self, data: st.DataObject) -> None:
        user, number = self._open_hold(data)
        self.release(user, number, None)

    @precondition(lambda self: any(m.holds for m in self.model.values()))
    @rule(data=st.data(), capture_first=st.booleans())
    def expiry_races_a_capture_of_an_open_hold(
        self, data: st.DataObject, capture_first: bool
    ) -> None:
        user, number = self._open_hold(data)
        self.expiry_races_a_capture(user, number, capture_first)

    @rule(ms=st.integers(1, 120_000))
    def time_passes(self, ms: int) -> None:
        self.clock += ms

    @rule(user=users, number=st.integers(1, 6))
    def expire(self, user: str, number: int) -> None:
        """The scheduler's sweep: an expiry of a hold, due or not (it then races nothing)."""
        hold_id = self._hold_id(user, number, None)
        command = Expire(user_id=user, hold_id=hold_id)
        refusal = self._closing_refusal(user, hold_id, expiring=True)
        if refusal is not None:
            self.refused("expire", command, refusal)
            return
        assert isinstance(self.run("expire", command), HoldExpired)
        del self.model[user].holds[hold_id]
        self.model[user].events += 1

    @rule(user=users, number=st.integers(1, 6), capture_first=st.booleans())
    def expiry_races_a_capture(self, user: str, number: int, capture_first: bool) -> None:
        """Both arrive at the same deadline: whichever is decided first wins, the other
        is refused, never both."""
        m = self.model.get(user)
        hold_id = self._hold_id(user, number, None)
        if m is None or hold_id not in m.holds:
            return
        self.clock = max(self.clock, m.holds[hold_id][1] - 1)  # the next step is the deadline
        if capture_first:
            self.capture(user, number, None, None)  # at the deadline: refused, hold_not_open
            self.expire(user, number)
        else:
            self.expire(user, number)
            self.capture(user, number, None, None)
        assert hold_id not in m.holds

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
            assert account.totals.held == m.held and account.totals.available >= 0
            assert {h: (o.credits, o.expires_at_ms) for h, o in account.holds.items()} == m.holds
            assert account.holds_made == m.made

    @invariant()
    def histories_are_dense_verified_and_fold_to_the_accounts(self) -> None:
        for user, account in self.accounts.items():
            history = [e for e in self.log if e.user_id == user]
            assert [e.version for e in history] == list(range(1, len(history) + 1))
            assert verify(history) is None
            assert fold(history) == account

    @invariant()
    def at_every_version_available_is_not_negative_and_held_is_the_open_holds(self) -> None:
        for user in self.accounts:
            state: Account | None = None
            for e in (e for e in self.log if e.user_id == user):
                state = apply(state, e)
                assert state.totals.available >= 0
                assert state.totals.held == sum(h.credits for h in state.holds.values())


LedgerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=60, deadline=None)
TestLedger = LedgerMachine.TestCase
