"""The credit score: a documented, deterministic, integer-only function of an
account's totals and history length.

    score = 300 + volume + engagement + history                  (300 .. 850)

    volume     = 5 * min(bits(purchased), 50)                    (0 .. 250)
    engagement = 4 * min(bits(min(used, purchased)), 50)         (0 .. 200)
    history    = 10 * min(bits(version), 10)                     (0 .. 100)

``bits(n)`` is ``n.bit_length()`` of the value clamped at 0, a base-2 logarithm
rounded up: every doubling of credits bought is worth the same 5 points, so
the score tells 10 credits from 10,000 and 10 million without letting the
largest buyer run off with it. ``min(used, purchased)`` counts the purchased
credits actually used: spending granted (adjusted) credits earns nothing, and,
unlike a ratio ``used / purchased``, it never falls when a user buys more.
``version`` is the number of events in the account (registration included).

Credit holds: the credits an account holds (``Totals.held``) count for
nothing, whether the hold is open, released or expired: reserving credits is
neither buying nor spending them. A capture counts as a use of the captured
part only (it adds it to ``used``), exactly like ``credits_used``; the part a
capture releases counts for nothing. Each hold event (hold, capture, release,
expiry) is an event of the account, so it counts in ``version`` like any other
(``history`` is capped at 2^10 events, so hold/release cycles cannot buy more
than those 100 points, which ordinary use earns as well).

Properties the tests hold it to: the result is in ``300..850``; it is
non-decreasing in each of ``purchased``, ``used`` and ``version``; it ignores
``balance`` and ``held``; and it uses no floats, so every process computes the
same score.
"""

from __future__ import annotations

from typing import Final

from .events import Totals

MIN_SCORE: Final = 300
MAX_SCORE: Final = 850

VOLUME_POINTS: Final = 5
VOLUME_BITS: Final = 50
ENGAGEMENT_POINTS: Final = 4
ENGAGEMENT_BITS: Final = 50
HISTORY_POINTS: Final = 10
HISTORY_BITS: Final = 10


def _bits(n: int, cap: int) -> int:
    return min(max(n, 0).bit_length(), cap)


def credit_score(totals: Totals, version: int) -> int:
    """The score of an account with these totals after ``version`` events."""
    volume = VOLUME_POINTS * _bits(totals.purchased, VOLUME_BITS)
    engagement = ENGAGEMENT_POINTS * _bits(min(totals.used, totals.purchased), ENGAGEMENT_BITS)
    history = HISTORY_POINTS * _bits(version, HISTORY_BITS)
    return MIN_SCORE + volume + engagement + history
