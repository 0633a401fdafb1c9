"""credit_score(): bounded, deterministic, integer-only, monotone where documented."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.events import Totals
from ledger.money import MAX_CREDITS
from ledger.scores import MAX_SCORE, MIN_SCORE, credit_score
from tests import strategies as s

credits = st.integers(0, MAX_CREDITS)
versions = st.integers(0, 10**9)


@st.composite
def totals(draw: st.DrawFn) -> Totals:
    purchased = draw(credits)
    used = draw(credits)
    return Totals(balance=draw(credits), purchased=purchased, used=used)


@s.QUICK
@given(t=totals(), version=versions)
def test_score_is_an_int_in_range(t: Totals, version: int) -> None:
    score = credit_score(t, version)
    assert type(score) is int
    assert MIN_SCORE <= score <= MAX_SCORE


@s.QUICK
@given(t=totals(), version=st.integers(), balance=st.integers())
def test_score_tolerates_any_ints_and_stays_in_range(t: Totals, version: int, balance: int) -> None:
    odd = Totals(balance=balance, purchased=-t.purchased, used=t.used * 3)
    assert MIN_SCORE <= credit_score(odd, version) <= MAX_SCORE


def test_both_ends_of_the_range_are_reached() -> None:
    assert (MIN_SCORE, MAX_SCORE) == (300, 850)
    assert credit_score(Totals(), 0) == MIN_SCORE
    full = Totals(balance=0, purchased=MAX_CREDITS, used=MAX_CREDITS)
    assert credit_score(full, 10**6) == MAX_SCORE


@s.QUICK
@given(t=totals(), version=versions)
def test_score_is_a_function_of_the_values(t: Totals, version: int) -> None:
    twin = Totals(balance=t.balance, purchased=t.purchased, used=t.used)
    assert credit_score(t, version) == credit_score(twin, version)


@s.QUICK
@given(t=totals(), version=versions, extra=credits)
def test_monotone_in_purchased(t: Totals, version: int, extra: int) -> None:
    more = Totals(balance=t.balance + extra, purchased=t.purchased + extra, used=t.used)
    assert credit_score(more, version) >= credit_score(t, version)


@s.QUICK
@given(t=totals(), version=versions, extra=credits)
def test_monotone_in_used(t: Totals, version: int, extra: int) -> None:
    more = Totals(balance=t.balance, purchased=t.purchased, used=t.used + extra)
    assert credit_score(more, version) >= credit_score(t, version)


@s.QUICK
@given(t=totals(), version=versions, extra=st.integers(0, 10**6))
def test_monotone_in_history(t: Totals, version: int, extra: int) -> None:
    assert credit_score(t, version + extra) >= credit_score(t, version)


@s.QUICK
@given(t=totals(), version=versions, balance=credits)
def test_balance_does_not_count(t: Totals, version: int, balance: int) -> None:
    other = Totals(balance=balance, purchased=t.purchased, used=t.used)
    assert credit_score(other, version) == credit_score(t, version)


@pytest.mark.parametrize("purchased", [1, 3, 1000, 2**20 + 7, 2**48])
def test_each_doubling_of_purchases_is_worth_five_points(purchased: int) -> None:
    """The documented volume term: 5 points per bit of ``purchased``."""
    one = credit_score(Totals(purchased=purchased), 1)
    two = credit_score(Totals(purchased=2 * purchased), 1)
    assert two - one == 5


def test_spending_granted_credits_earns_nothing() -> None:
    """Only purchased credits that were used count (``min(used, purchased)``)."""
    base = credit_score(Totals(balance=0, purchased=100, used=100), 5)
    over = credit_score(Totals(balance=0, purchased=100, used=10**9), 5)
    assert over == base
    assert credit_score(Totals(purchased=100, used=100), 5) > credit_score(
        Totals(purchased=100, used=0), 5
    )


@s.QUICK
@given(t=totals(), version=versions, held=credits)
def test_held_credits_do_not_count(t: Totals, version: int, held: int) -> None:
    assert credit_score(replace(t, held=held), version) == credit_score(t, version)


def test_a_capture_counts_as_the_use_of_the_captured_part_only() -> None:
    from ledger.accounts import Account
    from ledger.commands import Capture, Command, Hold, Purchase, RegisterUser, apply_command

    commands: list[Command] = [
        RegisterUser(user_id="u", email="u@x"),
        Purchase(user_id="u", amount=100, transaction_id="t"),
        Hold(user_id="u", amount=60, expires_in_s=60),
        Capture(user_id="u", hold_id="u:h1", amount=25),  # 35 released
    ]
    account: Account | None = None
    for at_ms, command in enumerate(commands):
        account, _ = apply_command(account, command, at_ms=at_ms)
    assert account is not None
    assert account.totals == Totals(balance=75, purchased=100, used=25, held=0)
    used_25 = Totals(balance=75, purchased=100, used=25)
    assert credit_score(account.totals, account.version) == credit_score(used_25, 4)
