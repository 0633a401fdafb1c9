"""parse(): strict about every field; decide(): the twin of append.lua."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.accounts import Account, apply
from ledger.chain import hash_of
from ledger.commands import (
    MAX_EMAIL,
    MAX_REASON,
    Adjust,
    Purchase,
    RegisterUser,
    Use,
    apply_command,
    check,
    decide,
    parse,
)
from ledger.errors import (
    DuplicateUser,
    InsufficientCredits,
    LimitExceeded,
    UnknownAccount,
    ValidationError,
)
from ledger.events import GENESIS, ZERO, CreditsAdjusted, CreditsPurchased, CreditsUsed
from ledger.money import MAX_CREDITS
from streams import keys
from streams.config import DEFAULT_PARTITIONS
from tests import strategies as s

FIELDS = {
    "register_user": {"user_id", "email"},
    "purchase": {"user_id", "amount", "currency", "transaction_id"},
    "use": {"user_id", "amount", "reason"},
    "adjust": {"user_id", "delta", "reason"},
}
REQUIRED = {
    "register_user": ["user_id", "email"],
    "purchase": ["user_id", "amount", "transaction_id"],
    "use": ["user_id", "amount"],
    "adjust": ["user_id", "delta", "reason"],
}
VALID: dict[str, dict[str, object]] = {
    "register_user": {"user_id": "u-1", "email": "a@example.org"},
    "purchase": {"user_id": "u-1", "amount": 10, "currency": "EUR", "transaction_id": "tx-1"},
    "use": {"user_id": "u-1", "amount": 3, "reason": "lunch"},
    "adjust": {"user_id": "u-1", "delta": -2, "reason": "refund fix"},
}


def field_of(kind: str, body: dict[str, object]) -> str | None:
    with pytest.raises(ValidationError) as info:
        parse(kind, body)
    return info.value.field


# --- parse accepts ------------------------------------------------------------------


@s.QUICK
@given(data=st.data(), kind=st.sampled_from(s.KINDS))
def test_parse_accepts_valid_bodies_and_keeps_every_value(data: st.DataObject, kind: str) -> None:
    body = data.draw(s.bodies(kind))
    command = parse(kind, body)
    assert (
        type(command).__name__
        == {
            "register_user": "RegisterUser",
            "purchase": "Purchase",
            "use": "Use",
            "adjust": "Adjust",
        }[kind]
    )
    for name, value in body.items():
        assert getattr(command, name) == value
    if kind == "purchase" and "currency" not in body:
        assert command.currency == "USD"  # type: ignore[union-attr]
    if kind == "use" and "reason" not in body:
        assert command.reason == ""  # type: ignore[union-attr]


def test_parse_accepts_any_mapping() -> None:
    assert parse("use", MappingProxyType({"user_id": "u", "amount": 1})) == Use(
        user_id="u", amount=1, reason=""
    )


@pytest.mark.parametrize("value", ["a" * 128, "a.b_c@d:e-f", "0"])
def test_user_id_edges_accepted(value: str) -> None:
    assert parse("register_user", {"user_id": value, "email": "a@b"}).user_id == value


def test_email_of_exactly_254_chars_is_accepted() -> None:
    email = "a@" + "b" * (MAX_EMAIL - 2)
    assert parse("register_user", {"user_id": "u", "email": email}).email == email  # type: ignore[union-attr]


def test_reason_of_exactly_500_chars_is_accepted() -> None:
    reason = "é" * MAX_REASON
    assert parse("use", {"user_id": "u", "amount": 1, "reason": reason}).reason == reason  # type: ignore[union-attr]


# --- parse rejects: kind, shape ----------------------------------------------------


@pytest.mark.parametrize("kind", ["", "Purchase", "purchase ", "delete_user", "use\n"])
def test_unknown_kind_names_kind(kind: str) -> None:
    assert field_of(kind, {"user_id": "u"}) == "kind"


@pytest.mark.parametrize("body", [[], "user_id=u", None, 5])
def test_body_that_is_not_an_object_is_refused(body: object) -> None:
    with pytest.raises(ValidationError):
        parse("use", body)  # type: ignore[arg-type]


@s.QUICK
@given(data=st.data(), kind=st.sampled_from(s.KINDS), extra=st.text(min_size=1, max_size=20))
def test_unknown_field_is_named(data: st.DataObject, kind: str, extra: str) -> None:
    body = dict(data.draw(s.bodies(kind)))
    if extra in FIELDS[kind]:
        extra = extra + "_x"
    body[extra] = 1
    assert field_of(kind, body) == extra


def test_non_string_key_is_refused() -> None:
    body: dict[object, object] = {"user_id": "u", "amount": 1, 7: "x"}
    assert field_of("use", body) == "7"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "missing"), [(k, f) for k, fields in REQUIRED.items() for f in fields]
)
def test_missing_required_field_is_named(kind: str, missing: str) -> None:
    body = dict(VALID[kind])
    del body[missing]
    assert field_of(kind, body) == missing


@pytest.mark.parametrize("kind", list(VALID))
def test_null_is_not_a_default(kind: str) -> None:
    for name in FIELDS[kind]:
        body = dict(VALID[kind])
        body[name] = None
        assert field_of(kind, body) == name


# --- parse rejects: money -----------------------------------------------------------


@s.QUICK
@given(kind=st.sampled_from(["purchase", "use", "adjust"]), value=s.not_an_int())
def test_money_must_be_a_real_int(kind: str, value: object) -> None:
    name = "delta" if kind == "adjust" else "amount"
    body = dict(VALID[kind], **{name: value})
    assert field_of(kind, body) == name


@pytest.mark.parametrize("value", [5.0, 1.0, True, False, "5", 0.5])
def test_whole_floats_and_bools_are_not_credits(value: object) -> None:
    assert field_of("purchase", dict(VALID["purchase"], amount=value)) == "amount"
    assert field_of("adjust", dict(VALID["adjust"], delta=value)) == "delta"


@s.QUICK
@given(kind=st.sampled_from(["purchase", "use", "adjust"]), value=s.out_of_range_ints())
def test_money_out_of_range_is_named(kind: str, value: int) -> None:
    name = "delta" if kind == "adjust" else "amount"
    assert field_of(kind, dict(VALID[kind], **{name: value})) == name


@pytest.mark.parametrize("value", [0, -1, -MAX_CREDITS])
def test_amount_must_be_positive(value: int) -> None:
    assert field_of("purchase", dict(VALID["purchase"], amount=value)) == "amount"
    assert field_of("use", dict(VALID["use"], amount=value)) == "amount"


def test_delta_must_not_be_zero() -> None:
    assert field_of("adjust", dict(VALID["adjust"], delta=0)) == "delta"


# --- parse rejects: text fields -----------------------------------------------------

HASH_TAG = "{" + keys.partitions(DEFAULT_PARTITIONS)[1].hash_tag + "}"
"""A user id shaped like a partition's hash tag, braces and all."""
BAD_USER_IDS = ["", "a" * 129, "a b", "a/b", "a\n", "ü", "a$b", "a\x00", "a#b", HASH_TAG]


@pytest.mark.parametrize("value", [*BAD_USER_IDS, 5, b"abc"])
@pytest.mark.parametrize("kind", list(VALID))
def test_bad_user_id_is_named(kind: str, value: object) -> None:
    assert field_of(kind, dict(VALID[kind], user_id=value)) == "user_id"


BAD_EMAILS = [
    "",
    "plain",
    "@b",
    "a@",
    "a@b@c",
    "a @b",
    "a@b\tc",
    "a@b\n",
    "a\x00@b",
    "a@b\x7f",
    "a\u00a0@b",
    "a\u2028@b",
    "a@" + "b" * (MAX_EMAIL - 1),
    "a\ud800@b",
]


@pytest.mark.parametrize("value", [*BAD_EMAILS, 5, ["a@b"]])
def test_bad_email_is_named(value: object) -> None:
    assert field_of("register_user", dict(VALID["register_user"], email=value)) == "email"


@pytest.mark.parametrize("value", ["usd", "US", "USDT", "US1", "USD\n", "ÜSD", 840])
def test_bad_currency_is_named(value: object) -> None:
    assert field_of("purchase", dict(VALID["purchase"], currency=value)) == "currency"


@pytest.mark.parametrize("value", ["", "a" * 129, "a@b", "a b", "tx\n", 17])
def test_bad_transaction_id_is_named(value: object) -> None:
    body = dict(VALID["purchase"], transaction_id=value)
    assert field_of("purchase", body) == "transaction_id"


@s.QUICK
@given(
    kind=st.sampled_from(["use", "adjust"]),
    value=st.one_of(
        s.with_control_char(),
        s.lone_surrogates(),
        st.text(min_size=MAX_REASON + 1, max_size=MAX_REASON + 5),
    ),
)
def test_bad_reason_is_named(kind: str, value: str) -> None:
    assert field_of(kind, dict(VALID[kind], reason=value)) == "reason"


@s.QUICK
@given(value=s.with_control_char(s.emails()))
def test_email_with_control_char_is_named(value: str) -> None:
    assert field_of("register_user", dict(VALID["register_user"], email=value)) == "email"


@pytest.mark.parametrize("value", ["", "   ", "\u3000"])
def test_adjust_needs_a_real_reason(value: str) -> None:
    assert field_of("adjust", dict(VALID["adjust"], reason=value)) == "reason"


def test_use_reason_may_be_empty() -> None:
    assert parse("use", dict(VALID["use"], reason="")).reason == ""  # type: ignore[union-attr]


# --- decide ------------------------------------------------------------------------


def registered(user_id: str = "u", at_ms: int = 1) -> Account:
    return apply(None, decide(None, RegisterUser(user_id=user_id, email="u@x"), at_ms=at_ms))


def funded(balance: int, user_id: str = "u") -> Account:
    account, _ = apply_command(
        registered(user_id),
        Purchase(user_id=user_id, amount=balance, transaction_id="seed"),
        at_ms=2,
    )
    return account


def test_registration_event() -> None:
    event = decide(None, RegisterUser(user_id="u", email="u@x"), at_ms=1234)
    assert (event.version, event.after, event.prev_hash, event.at_ms) == (1, ZERO, GENESIS, 1234)
    assert event.hash == hash_of(event) and len(event.hash) == 40


def test_second_registration_is_duplicate_user() -> None:
    with pytest.raises(DuplicateUser) as info:
        decide(registered(), RegisterUser(user_id="u", email="other@x"), at_ms=5)
    assert info.value.user_id == "u"


@pytest.mark.parametrize(
    "command",
    [
        Purchase(user_id="ghost", amount=1, transaction_id="t"),
        Use(user_id="ghost", amount=1),
        Adjust(user_id="ghost", delta=1, reason="r"),
    ],
)
def test_commands_on_no_account_are_unknown_account(command: Purchase | Use | Adjust) -> None:
    with pytest.raises(UnknownAccount) as info:
        decide(None, command, at_ms=1)
    assert info.value.user_id == "ghost"


@s.QUICK
@given(balance=st.integers(0, 10**6), extra=st.integers(1, 10**6))
def test_overdraw_is_refused_with_balance_and_request(balance: int, extra: int) -> None:
    account = funded(balance) if balance else registered()
    cases: list[tuple[Use | Adjust, int]] = [
        (Use(user_id="u", amount=balance + extra), balance + extra),
        (Adjust(user_id="u", delta=-(balance + extra), reason="r"), balance + extra),
    ]
    for command, requested in cases:
        with pytest.raises(InsufficientCredits) as info:
            decide(account, command, at_ms=3)
        assert (info.value.balance, info.value.requested) == (balance, requested)


@s.QUICK
@given(balance=st.integers(1, MAX_CREDITS))
def test_spending_exactly_the_balance_leaves_zero(balance: int) -> None:
    account = funded(balance)
    used = decide(account, Use(user_id="u", amount=balance), at_ms=3)
    adjusted = decide(account, Adjust(user_id="u", delta=-balance, reason="r"), at_ms=3)
    assert used.after.balance == adjusted.after.balance == 0
    assert used.after.used == balance and adjusted.after.used == 0


def test_totals_beyond_max_credits_are_limit_exceeded() -> None:
    account = funded(MAX_CREDITS)
    commands: list[Purchase | Adjust] = [
        Purchase(user_id="u", amount=1, transaction_id="t2"),
        Adjust(user_id="u", delta=1, reason="bonus"),
    ]
    for command in commands:
        with pytest.raises(LimitExceeded):
            decide(account, command, at_ms=3)


def test_purchased_total_is_bounded_even_when_balance_is_not_full() -> None:
    account = funded(MAX_CREDITS)
    account, _ = apply_command(account, Use(user_id="u", amount=MAX_CREDITS), at_ms=3)
    assert account.totals.balance == 0
    with pytest.raises(LimitExceeded):
        decide(account, Purchase(user_id="u", amount=1, transaction_id="t3"), at_ms=4)


def test_used_total_is_bounded_even_when_the_balance_allows_the_spend() -> None:
    account = funded(MAX_CREDITS)
    account, _ = apply_command(account, Use(user_id="u", amount=MAX_CREDITS), at_ms=3)
    account, _ = apply_command(account, Adjust(user_id="u", delta=1, reason="gift"), at_ms=4)
    with pytest.raises(LimitExceeded):
        decide(account, Use(user_id="u", amount=1), at_ms=5)


@s.QUICK
@given(data=st.data())
def test_decide_builds_the_next_linked_event(data: st.DataObject) -> None:
    history = data.draw(s.histories(min_events=2))
    account = None
    for event in history:
        account = apply(account, event)
    assert account is not None
    command = data.draw(s.commands([account.user_id], register=False))
    try:
        event = decide(account, command, at_ms=99)
    except (InsufficientCredits, LimitExceeded):
        return
    assert event.version == account.version + 1
    assert event.prev_hash == account.head
    assert event.hash == hash_of(event)
    assert event.after.balance == account.totals.balance + event.amount
    expected_type = {Purchase: CreditsPurchased, Use: CreditsUsed, Adjust: CreditsAdjusted}[
        type(command)
    ]
    assert type(event) is expected_type
    assert apply(account, event).totals == event.after


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: Use(user_id="u", amount=-5), "amount"),
        (lambda: Use(user_id="u", amount=0), "amount"),
        (lambda: Purchase(user_id="u", amount=True, transaction_id="t"), "amount"),
        (lambda: Purchase(user_id="u", amount=1, currency="usd", transaction_id="t"), "currency"),
        (lambda: Adjust(user_id="u", delta=0, reason="r"), "delta"),
        (lambda: Adjust(user_id="u", delta=1, reason=""), "reason"),
        (lambda: Use(user_id="u", amount=1, reason="a\nb"), "reason"),
        (lambda: RegisterUser(user_id="a b", email="x@example.com"), "user_id"),
    ],
)
def test_commands_built_in_code_check_themselves(build: Any, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        build()
    assert info.value.field == field


def test_check_is_identity_on_valid_commands() -> None:
    command = Purchase(user_id="u", amount=3, currency="EUR", transaction_id="t")
    assert check(command) == command


def test_decide_refuses_a_command_for_another_account() -> None:
    with pytest.raises(ValidationError) as info:
        decide(funded(10, "alice"), Use(user_id="bob", amount=1), at_ms=3)
    assert info.value.field == "user_id"


@pytest.mark.parametrize("at_ms", [-1, True, 1.5, "1"])
def test_decide_refuses_a_bad_timestamp(at_ms: object) -> None:
    with pytest.raises(ValidationError) as info:
        decide(None, RegisterUser(user_id="u", email="u@x"), at_ms=at_ms)  # type: ignore[arg-type]
    assert info.value.field == "at_ms"
