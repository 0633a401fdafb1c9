"""apply()/fold(): state is the fold of events, and the fold trusts no event."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.accounts import Account, apply, fold
from ledger.commands import Adjust, Purchase, RegisterUser, Use, apply_command, decide
from ledger.errors import ChainBroken, IntegrityError, VersionGap
from ledger.events import (
    GENESIS,
    ZERO,
    CreditsAdjusted,
    CreditsPurchased,
    CreditsUsed,
    Event,
    Totals,
    UserRegistered,
)
from tests import strategies as s


def prefix_states(events: list[Event]) -> list[Account]:
    states: list[Account] = []
    account: Account | None = None
    for event in events:
        account = apply(account, event)
        states.append(account)
    return states


def simple_history() -> list[Event]:
    account, e1 = apply_command(None, RegisterUser(user_id="u", email="u@x.org"), at_ms=10)
    account, e2 = apply_command(
        account, Purchase(user_id="u", amount=100, transaction_id="t1"), at_ms=20
    )
    account, e3 = apply_command(account, Use(user_id="u", amount=30, reason="r"), at_ms=30)
    account, e4 = apply_command(account, Adjust(user_id="u", delta=-5, reason="fee"), at_ms=40)
    _, e5 = apply_command(account, Purchase(user_id="u", amount=7, transaction_id="t2"), at_ms=50)
    return [e1, e2, e3, e4, e5]


# --- properties of decided histories ------------------------------------------------


@s.QUICK
@given(events=s.histories())
def test_fold_of_decided_events_never_goes_negative_and_sums_up(events: list[Event]) -> None:
    states = prefix_states(events)
    purchased = used = adjusted = 0
    for n, (event, state) in enumerate(zip(events, states, strict=True), start=1):
        assert state.version == event.version == n
        assert state.totals.balance >= 0
        if isinstance(event, CreditsPurchased):
            purchased += event.credits
        elif isinstance(event, CreditsUsed):
            used += event.credits
        elif isinstance(event, CreditsAdjusted):
            adjusted += event.delta
        assert state.totals == Totals(
            balance=purchased - used + adjusted, purchased=purchased, used=used
        )
        assert state.head == event.hash
    assert fold(events) == states[-1]


@s.QUICK
@given(events=s.histories())
def test_account_keeps_user_and_email_of_its_registration(events: list[Event]) -> None:
    first = events[0]
    assert isinstance(first, UserRegistered)
    account = fold(events)
    assert account is not None
    assert (account.user_id, account.email) == (first.user_id, first.email)


def test_fold_of_nothing_is_none() -> None:
    assert fold([]) is None


def test_simple_history_totals() -> None:
    account = fold(simple_history())
    assert account is not None
    assert account.totals == Totals(balance=72, purchased=107, used=30)
    assert account.version == 5


# --- apply rejects gaps, reorders and tampering ---------------------------------------


@s.QUICK
@given(events=s.histories(min_events=3), data=st.data())
def test_skipping_an_event_is_a_version_gap(events: list[Event], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(events) - 2), label="skipped")
    with pytest.raises(VersionGap) as info:
        fold(events[:i] + events[i + 1 :])
    assert (info.value.expected, info.value.got) == (i + 1, i + 2)


@s.QUICK
@given(events=s.histories(min_events=2), data=st.data())
def test_reordered_events_are_a_version_gap(events: list[Event], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(events) - 2), label="i")
    j = data.draw(st.integers(i + 1, len(events) - 1), label="j")
    swapped = list(events)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    with pytest.raises(VersionGap) as info:
        fold(swapped)
    assert (info.value.expected, info.value.got) == (i + 1, j + 1)


@s.QUICK
@given(events=s.histories(min_events=2), data=st.data())
def test_replaying_an_event_twice_is_a_version_gap(
    events: list[Event], data: st.DataObject
) -> None:
    i = data.draw(st.integers(0, len(events) - 1), label="repeated")
    with pytest.raises(VersionGap):
        fold([*events[: i + 1], events[i], *events[i + 1 :]])


@s.QUICK
@given(events=s.histories(min_events=2), data=st.data())
def test_changed_field_without_new_hash_is_chain_broken(
    events: list[Event], data: st.DataObject
) -> None:
    i = data.draw(st.integers(1, len(events) - 1), label="index")
    event = events[i]
    tampered = replace(event, at_ms=event.at_ms + 1)
    with pytest.raises(ChainBroken) as info:
        fold([*events[:i], tampered, *events[i + 1 :]])
    assert info.value.version == i + 1


@s.QUICK
@given(events=s.histories(min_events=2), data=st.data(), bump=st.integers(1, 1000))
def test_forged_totals_with_a_fresh_hash_are_chain_broken(
    events: list[Event], data: st.DataObject, bump: int
) -> None:
    i = data.draw(st.integers(1, len(events) - 1), label="index")
    event = events[i]
    field = data.draw(st.sampled_from(["balance", "purchased", "used"]), label="total")
    after = replace(event.after, **{field: getattr(event.after, field) + bump})
    with pytest.raises(ChainBroken) as info:
        fold([*events[:i], s.reseal(event, after=after)])
    assert info.value.version == i + 1


def test_first_event_must_be_a_registration() -> None:
    events = simple_history()
    purchase = s.reseal(
        events[1], version=1, prev_hash=GENESIS, after=Totals(balance=100, purchased=100, used=0)
    )
    with pytest.raises(IntegrityError) as info:
        apply(None, purchase)
    assert type(info.value) is IntegrityError


def test_first_event_must_be_version_one() -> None:
    first = s.reseal(simple_history()[0], version=2)
    with pytest.raises(VersionGap) as info:
        apply(None, first)
    assert (info.value.expected, info.value.got) == (1, 2)


def test_first_event_must_link_to_genesis() -> None:
    first = s.reseal(simple_history()[0], prev_hash="f" * 40)
    with pytest.raises(ChainBroken):
        apply(None, first)


def test_registration_starts_at_zero() -> None:
    first = s.reseal(simple_history()[0], after=Totals(balance=5, purchased=5, used=0))
    with pytest.raises(ChainBroken):
        apply(None, first)


@pytest.mark.parametrize("after", [1, 2])
def test_second_registration_is_refused(after: int) -> None:
    """Even right after the first one, when the totals are still zero."""
    events = simple_history()
    account = fold(events[:after])
    assert account is not None
    again = s.reseal(events[0], version=after + 1, prev_hash=account.head, after=account.totals)
    with pytest.raises(ChainBroken) as info:
        apply(account, again)
    assert info.value.version == after + 1


def test_event_of_another_user_is_refused() -> None:
    events = simple_history()
    account = fold(events[:2])
    assert account is not None
    stranger = s.reseal(events[2], user_id="mallory")
    with pytest.raises(ChainBroken):
        apply(account, stranger)


def test_recorded_overdraft_is_an_integrity_error() -> None:
    """An event whose totals follow and whose hash is right, but which overdraws."""
    events = simple_history()
    account = fold(events[:4])
    assert account is not None
    balance = account.totals.balance
    overdraw = s.reseal(
        events[2],
        version=5,
        prev_hash=account.head,
        credits=balance + 1,
        after=Totals(
            balance=-1, purchased=account.totals.purchased, used=account.totals.used + balance + 1
        ),
    )
    with pytest.raises(IntegrityError) as info:
        apply(account, overdraw)
    assert type(info.value) is IntegrityError
    assert "negative" in str(info.value)


@pytest.mark.parametrize(
    ("index", "changes"),
    [
        (1, {"credits": 0}),
        (1, {"credits": -5}),
        (2, {"credits": -5}),
        (3, {"delta": 0}),
    ],
)
def test_impossible_amounts_are_integrity_errors(index: int, changes: dict[str, int]) -> None:
    events = simple_history()
    account = fold(events[:index])
    assert account is not None
    event = events[index]
    # mypy checks ``changes``' values against every field; each names an int field here
    forged = replace(event, **changes)  # type: ignore[arg-type]
    after = Totals(
        balance=account.totals.balance + forged.amount,
        purchased=account.totals.purchased
        + (forged.amount if isinstance(forged, CreditsPurchased) else 0),
        used=account.totals.used - (forged.amount if isinstance(forged, CreditsUsed) else 0),
    )
    with pytest.raises(IntegrityError):
        apply(account, s.reseal(forged, after=after))


def test_decided_registration_has_zero_totals() -> None:
    event = decide(None, RegisterUser(user_id="z", email="z@z"), at_ms=0)
    assert apply(None, event).totals == ZERO
