"""The pure policies: backoff and per-level read counts."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.retry import RetryPolicy
from streams.worker import per_partition


@given(st.integers(1, 60), st.integers(0, 10_000), st.integers(1, 10**7), st.randoms())
def test_backoff_grows_within_bounds(
    attempt: int, base: int, cap_extra: int, rand: random.Random
) -> None:
    policy = RetryPolicy(base_ms=base, max_ms=base + cap_extra)
    ceiling = min(policy.max_ms, base * 2 ** (attempt - 1))
    delay = policy.backoff_ms(attempt, rand)
    assert ceiling - ceiling // 2 <= delay <= ceiling
    # the next attempt's smallest delay is never below this attempt's largest … unless capped
    nxt = min(policy.max_ms, base * 2**attempt)
    assert nxt - nxt // 2 >= ceiling // 2


def test_backoff_is_jittered() -> None:
    policy = RetryPolicy(base_ms=1000)
    delays = {policy.backoff_ms(3, random.Random(seed)) for seed in range(20)}
    assert len(delays) > 10 and min(delays) >= 2000 and max(delays) <= 4000


def test_exhaustion() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.exhausted(n) for n in (1, 2, 3, 4)] == [False, False, True, True]
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_ms=10, max_ms=5)


@given(st.integers(1, 10_000), st.integers(1, 64))
def test_per_partition_covers_the_count(count: int, partitions: int) -> None:
    each = per_partition(count, partitions)
    assert each * partitions >= count
    assert each == 1 or (each - 1) * partitions < count
