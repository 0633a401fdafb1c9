"""Retry policy: a pure function of the attempt number.

"Equal jitter" backoff: half of the exponential delay is fixed, half random, so
delays never shrink from one attempt to the next yet workers retrying together
spread out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    max_attempts: int = 5
    base_ms: int = 1_000
    max_ms: int = 300_000

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.base_ms < 0 or self.max_ms < self.base_ms:
            raise ValueError("need max_attempts >= 1 and 0 <= base_ms <= max_ms")

    def exhausted(self, attempts: int) -> bool:
        """True once ``attempts`` deliveries have been used up."""
        return attempts >= self.max_attempts

    def backoff_ms(self, attempt: int, rand: random.Random | None = None) -> int:
        """Delay before attempt ``attempt + 1``, given ``attempt`` (>= 1) has failed."""
        ceiling = min(self.max_ms, self.base_ms << min(attempt - 1, 40))
        half = ceiling // 2
        r = rand.random() if rand is not None else random.random()
        return ceiling - half + int(half * r)
