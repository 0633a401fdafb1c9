"""Hypothesis strategies shared by the test suites.

Valid inputs (user ids, emails, command bodies, decided histories) and hostile
ones (floats and bools for money, huge ints, control characters, ``$``-keys,
deep nesting). Settings stay modest: ``QUICK`` for properties, and no deadline,
because a noisy 2-core CI box makes timing a lie.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from ledger.accounts import Account, apply
from ledger.chain import hash_of
from ledger.commands import (
    MAX_REASON,
    Adjust,
    Capture,
    Command,
    Expire,
    Hold,
    Purchase,
    RegisterUser,
    Release,
    Use,
    decide,
)
from ledger.errors import LedgerError
from ledger.events import Event
from ledger.money import MAX_CREDITS

E = TypeVar("E", bound=Event)

QUICK = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
"""Property tests: enough examples to find edge cases, few enough for CI."""

# --- valid values -----------------------------------------------------------------

USER_ID_CHARS = string.ascii_letters + string.digits + "._@:-"
TRANSACTION_ID_CHARS = string.ascii_letters + string.digits + "._:-"


def user_ids(max_size: int = 128) -> st.SearchStrategy[str]:
    return st.text(alphabet=USER_ID_CHARS, min_size=1, max_size=max_size)


def transaction_ids() -> st.SearchStrategy[str]:
    return st.text(alphabet=TRANSACTION_ID_CHARS, min_size=1, max_size=128)


def currencies() -> st.SearchStrategy[str]:
    return st.text(alphabet=string.ascii_uppercase, min_size=3, max_size=3)


_email_char = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="@").filter(
    lambda c: not c.isspace()
)


@st.composite
def emails(draw: st.DrawFn) -> str:
    """Plain ``a.b@example.org`` addresses and unicode ones (always <= 254 chars)."""
    plain = st.text(alphabet=string.ascii_letters + string.digits + ".-_+", min_size=1, max_size=64)
    fancy = st.text(alphabet=_email_char, min_size=1, max_size=64)
    local = draw(st.one_of(plain, fancy))
    domain = draw(st.one_of(plain, fancy, st.just("x" * 189)))
    return f"{local}@{domain}"


def reasons(min_size: int = 0) -> st.SearchStrategy[str]:
    """Free text without control characters (may contain spaces and unicode)."""
    chars = st.characters(blacklist_categories=("Cs", "Cc"))
    text = st.text(alphabet=chars, min_size=min_size, max_size=MAX_REASON)
    if min_size:
        return text.filter(lambda s: s.strip() != "")
    return text


def amounts() -> st.SearchStrategy[int]:
    """Mostly small amounts (so spends often succeed), sometimes huge ones."""
    return st.one_of(
        st.integers(1, 1_000), st.integers(1, MAX_CREDITS), st.sampled_from([1, MAX_CREDITS])
    )


def deltas() -> st.SearchStrategy[int]:
    return st.one_of(amounts(), amounts().map(lambda n: -n))


# --- command bodies and commands --------------------------------------------------


def bodies(
    kind: str, user_id: st.SearchStrategy[str] | None = None
) -> st.SearchStrategy[dict[str, object]]:
    """A valid JSON body for ``parse(kind, body)`` (optional fields sometimes left out)."""
    uid = user_id if user_id is not None else user_ids()
    if kind == "register_user":
        return st.fixed_dictionaries({"user_id": uid, "email": emails()})
    if kind == "purchase":
        return st.fixed_dictionaries(
            {"user_id": uid, "amount": amounts(), "transaction_id": transaction_ids()},
            optional={"currency": currencies()},
        )
    if kind == "use":
        return st.fixed_dictionaries(
            {"user_id": uid, "amount": amounts()}, optional={"reason": reasons()}
        )
    if kind == "adjust":
        return st.fixed_dictionaries(
            {"user_id": uid, "delta": deltas(), "reason": reasons(min_size=1)}
        )
    raise ValueError(kind)


KINDS = ("register_user", "purchase", "use", "adjust")


def commands(users: Sequence[str], *, register: bool = True) -> st.SearchStrategy[Command]:
    """Valid commands (each may still be refused by ``decide``) for these users;
    ``register=False`` leaves out registrations."""
    uid = st.sampled_from(list(users))
    balance_changes = [
        st.builds(
            Purchase,
            user_id=uid,
            amount=amounts(),
            currency=currencies(),
            transaction_id=transaction_ids(),
        ),
        st.builds(Use, user_id=uid, amount=amounts(), reason=reasons()),
        st.builds(Adjust, user_id=uid, delta=deltas(), reason=reasons(min_size=1)),
    ]
    if register:
        balance_changes.append(st.builds(RegisterUser, user_id=uid, email=emails()))
    return st.one_of(*balance_changes)


def hold_commands(
    users: Sequence[str],
    *,
    holds_per_user: int = 4,
    expire: bool = True,
    hold_amounts: st.SearchStrategy[int] | None = None,
) -> st.SearchStrategy[Command]:
    """Valid hold commands for these users: holds (expiring in 60 s or more),
    captures (all or part), releases and (``expire``) expiries of hold ids made
    for any of the users, so some name another account's hold."""
    uid = st.sampled_from(list(users))
    numbers = st.integers(1, holds_per_user)

    @st.composite
    def closing(draw: st.DrawFn, cls: type[Capture | Release | Expire]) -> Command:
        user = draw(uid)
        owner = draw(st.one_of(st.just(user), st.just(user), st.just(user), uid))
        hold_id = f"{owner}:h{draw(numbers)}"
        if cls is Capture:
            amount = draw(st.one_of(st.none(), st.integers(1, 60)))
            return Capture(user_id=user, hold_id=hold_id, amount=amount)
        return cls(user_id=user, hold_id=hold_id)

    options = [
        st.builds(
            Hold,
            user_id=uid,
            amount=hold_amounts
            if hold_amounts is not None
            else st.one_of(st.integers(1, 50), amounts()),
            reason=reasons(),
            expires_in_s=st.integers(60, 7 * 24 * 3600),
        ),
        closing(Capture),
        closing(Release),
    ]
    if expire:
        options.append(closing(Expire))
    return st.one_of(*options)


@st.composite
def histories(draw: st.DrawFn, min_events: int = 1, max_events: int = 12) -> list[Event]:
    """One account's events as ``decide`` makes them: a registration, then
    purchases, uses and adjustments (refused commands are simply not recorded)."""
    uid = draw(user_ids(max_size=16))
    at_ms = draw(st.integers(0, 2**41))
    account: Account | None = None
    events: list[Event] = []
    target = draw(st.integers(min_events, max_events))
    body = commands([uid], register=False)
    event: Event | None = decide(None, RegisterUser(user_id=uid, email=draw(emails())), at_ms=at_ms)
    for _ in range(max_events * 4):
        if event is not None:
            account = apply(account, event)
            events.append(event)
            event = None
        if len(events) >= target:
            break
        at_ms += draw(st.integers(0, 5_000))
        try:
            event = decide(account, draw(body), at_ms=at_ms)
        except LedgerError:
            event = None
    return events


def reseal(event: E, **changes: Any) -> E:
    """``event`` with ``changes`` and a hash recomputed to match (a careful forger)."""
    changed = replace(event, **changes)
    return replace(changed, hash=hash_of(changed))


# --- hostile values ---------------------------------------------------------------


def floats_for_money() -> st.SearchStrategy[float]:
    """Floats, including whole ones like 5.0, NaN and infinities."""
    return st.one_of(st.floats(), st.integers(-1000, 1000).map(float))


def not_an_int() -> st.SearchStrategy[object]:
    """Anything a JSON body could carry in place of an integer of credits."""
    return st.one_of(
        st.booleans(),
        floats_for_money(),
        st.none(),
        st.text(max_size=5),
        st.integers(-5, 5).map(str),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )


def out_of_range_ints() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(min_value=MAX_CREDITS + 1),
        st.integers(max_value=-MAX_CREDITS - 1),
        st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30]),
    )


CONTROL_CHARS = [chr(c) for c in range(0x20)] + ["\x7f"]


@st.composite
def with_control_char(draw: st.DrawFn, base: st.SearchStrategy[str] | None = None) -> str:
    """A string with at least one control character (\\x00-\\x1f, \\x7f) inserted."""
    text = draw(base if base is not None else st.text(max_size=20))
    pos = draw(st.integers(0, len(text)))
    return text[:pos] + draw(st.sampled_from(CONTROL_CHARS)) + text[pos:]


def lone_surrogates() -> st.SearchStrategy[str]:
    """Strings JSON can carry ("\\ud800") that UTF-8 cannot encode."""
    return st.integers(0xD800, 0xDFFF).map(chr).map(lambda s: f"a{s}b")


def dollar_keys() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["$where", "$set", "$gt", "$ne", "$", "$$ROOT"]),
        st.text(max_size=10).map(lambda s: "$" + s),
    )


SURROGATES: tuple[Literal["Cs"]] = ("Cs",)  # typed: a bare ("Cs",) is tuple[str] to mypy


def json_values(max_leaves: int = 20) -> st.SearchStrategy[object]:
    """JSON-like data the task validation accepts (safe keys, int64, finite floats)."""
    keys = st.text(max_size=12).filter(lambda k: not k.startswith("$") and "\x00" not in k)
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(alphabet=st.characters(blacklist_categories=SURROGATES), max_size=20),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def json_objects() -> st.SearchStrategy[dict[str, object]]:
    keys = st.text(max_size=12).filter(lambda k: not k.startswith("$") and "\x00" not in k)
    return st.dictionaries(keys, json_values(), max_size=5)


def nest(depth: int, leaf: object = 1, *, key: str = "k") -> dict[str, Any]:
    """A dict nested ``depth`` levels deep (the outer dict is level 1)."""
    value: Any = leaf
    for _ in range(depth):
        value = {key: value}
    return dict(value)


@st.composite
def hostile_at_depth(
    draw: st.DrawFn, bad: st.SearchStrategy[tuple[str, object]]
) -> tuple[dict[str, Any], str]:
    """``(data, path)``: safe nesting with one bad ``(key, value)`` placed somewhere
    inside; ``path`` is the dotted field the error should name."""
    keys = draw(
        st.lists(st.sampled_from(["a", "b", "filter", "data", "x_1"]), min_size=0, max_size=5)
    )
    bad_key, bad_value = draw(bad)
    value: Any = {bad_key: bad_value}
    for k in reversed(keys):
        value = {k: value}
    path = ".".join(["task_data", *keys, bad_key])
    return value, path
