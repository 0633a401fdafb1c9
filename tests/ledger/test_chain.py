"""The hash chain: decided histories verify; any change shows at the right version."""

from __future__ import annotations

import hashlib
from dataclasses import fields, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.accounts import fold
from ledger.chain import canonical, hash_of, link, verify
from ledger.errors import ChainBroken, IntegrityError, VersionGap
from ledger.events import CreditsAdjusted, CreditsUsed, Event
from tests import strategies as s


def break_version(result: ChainBroken | VersionGap | None) -> int:
    """The version at which verify() says the chain breaks."""
    assert result is not None, "verify() missed the change"
    if isinstance(result, VersionGap):
        return result.expected
    return result.version


@st.composite
def tampered(draw: st.DrawFn, event: Event) -> Event:
    """``event`` with one field (or its kind) changed to a different value."""
    names = [f.name for f in fields(event)]
    if isinstance(event, CreditsUsed | CreditsAdjusted):
        names.append("<kind>")
    name = draw(st.sampled_from(names), label="field")
    if name == "<kind>":
        if isinstance(event, CreditsUsed):
            # Same amount, text and ref: only the kind tells it apart.
            return CreditsAdjusted(
                user_id=event.user_id,
                version=event.version,
                at_ms=event.at_ms,
                after=event.after,
                prev_hash=event.prev_hash,
                hash=event.hash,
                delta=-event.credits,
                reason=event.reason,
            )
        assert isinstance(event, CreditsAdjusted)
        if event.delta < 0:
            return CreditsUsed(
                user_id=event.user_id,
                version=event.version,
                at_ms=event.at_ms,
                after=event.after,
                prev_hash=event.prev_hash,
                hash=event.hash,
                credits=-event.delta,
                reason=event.reason,
            )
        name = "delta"
    old = getattr(event, name)
    new: object
    if name == "after":
        total = draw(st.sampled_from(["balance", "purchased", "used"]))
        bump = draw(st.integers(-5, 5).filter(bool))
        new = replace(old, **{total: getattr(old, total) + bump})
    elif isinstance(old, int):
        new = draw(st.integers(-(2**60), 2**60).filter(lambda v: v != old))
    elif name in ("hash", "prev_hash"):
        new = draw(st.text("0123456789abcdef", min_size=40, max_size=40).filter(lambda v: v != old))
    else:
        new = draw(st.text(max_size=20).filter(lambda v: v != old))
    # the field is picked at run time; mypy would check ``new`` against every field's type
    return replace(event, **{name: new})  # type: ignore[arg-type]


@s.QUICK
@given(events=s.histories(max_events=15))
def test_decided_chain_verifies(events: list[Event]) -> None:
    assert verify(events) is None
    assert all(e.hash == hash_of(e) for e in events)


@s.QUICK
@given(events=s.histories(max_events=10), data=st.data())
def test_any_changed_field_breaks_at_that_version(events: list[Event], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(events) - 1), label="index")
    bad = data.draw(tampered(events[i]))
    changed = [*events[:i], bad, *events[i + 1 :]]
    assert break_version(verify(changed)) == i + 1
    with pytest.raises(IntegrityError):
        fold(changed)


@s.QUICK
@given(events=s.histories(min_events=2, max_events=10), data=st.data())
def test_a_resealed_change_breaks_at_the_next_event(
    events: list[Event], data: st.DataObject
) -> None:
    """A forger who recomputes the changed event's hash is caught by its successor."""
    i = data.draw(st.integers(0, len(events) - 2), label="index")
    event = events[i]
    forged = s.reseal(event, at_ms=event.at_ms + 1)
    result = verify([*events[:i], forged, *events[i + 1 :]])
    assert isinstance(result, ChainBroken)
    assert result.version == i + 2


@s.QUICK
@given(events=s.histories(min_events=2, max_events=10), data=st.data())
def test_deleting_an_event_breaks_at_its_version(events: list[Event], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(events) - 2), label="deleted")
    result = verify(events[:i] + events[i + 1 :])
    assert isinstance(result, VersionGap)
    assert (result.expected, result.got) == (i + 1, i + 2)


@s.QUICK
@given(events=s.histories(min_events=2, max_events=10))
def test_a_truncated_chain_is_only_caught_by_its_head(events: list[Event]) -> None:
    """Dropping the newest events leaves a valid prefix: ``verify`` alone cannot see
    it, which is why the audit compares the fold's head with the stored head."""
    prefix = events[:-1]
    assert verify(prefix) is None
    short, full = fold(prefix), fold(events)
    assert short is not None and full is not None
    assert short.head != full.head


@s.QUICK
@given(events=s.histories(min_events=2, max_events=10), data=st.data())
def test_swapping_two_events_breaks_at_the_first(events: list[Event], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(events) - 2), label="i")
    j = data.draw(st.integers(i + 1, len(events) - 1), label="j")
    swapped = list(events)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    result = verify(swapped)
    assert isinstance(result, VersionGap)
    assert (result.expected, result.got) == (i + 1, j + 1)


@s.QUICK
@given(
    events=s.histories(min_events=2, max_events=8), others=s.histories(max_events=8), data=st.data()
)
def test_splicing_in_another_accounts_event_is_caught(
    events: list[Event], others: list[Event], data: st.DataObject
) -> None:
    i = data.draw(st.integers(0, len(events) - 1), label="index")
    foreign = [e for e in others if e.version == i + 1]
    if not foreign or others[0].user_id == events[0].user_id:
        return  # no event at that version, or not another account (a fork, not a splice)
    result = verify([*events[:i], foreign[0], *events[i + 1 :]])
    assert break_version(result) in (i + 1, i + 2)


def test_canonical_bytes_match_the_documented_encoding() -> None:
    """Known answer, built by hand from the docstring: ``<len>:<utf-8>`` pieces."""
    data = canonical("credits_used", "ü1", 3, 1700000000000, -25, 75, 100, 25, "café", "", "0" * 40)
    expected = (
        "12:credits_used3:ü11:313:17000000000003:-252:753:1002:255:café0:40:" + "0" * 40
    ).encode("utf-8")
    assert data == expected
    assert (
        link("credits_used", "ü1", 3, 1700000000000, -25, 75, 100, 25, "café", "", "0" * 40)
        == hashlib.sha1(expected).hexdigest()
    )


@s.QUICK
@given(a=st.text(max_size=8), b=st.text(max_size=8), c=st.text(max_size=8), d=st.text(max_size=8))
def test_canonical_encoding_is_unambiguous(a: str, b: str, c: str, d: str) -> None:
    """Moving characters between adjacent text fields changes the bytes."""
    if (a, b) == (c, d):
        return
    one = canonical("k", "u", 1, 0, 0, 0, 0, 0, a, b, "p")
    two = canonical("k", "u", 1, 0, 0, 0, 0, 0, c, d, "p")
    assert one != two
