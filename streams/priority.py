"""How many entries a worker reads from each priority level in one round.

Levels are read highest first, each taking what is left of the round's batch, so
CRITICAL work is always served before HIGH, and so on. Each lower level still
gets ``reserve`` reads per round even when higher levels fill the batch: that is
the guaranteed share that keeps LOW from starving under a flood of CRITICAL.
"""

from __future__ import annotations


def read_count(batch: int, taken: int, rank: int, reserve: int = 1) -> int:
    """Entries to ask from the level at ``rank`` (0 = highest) after ``taken`` so far."""
    left = batch - taken
    if rank == 0:
        return max(left, 1)
    return max(left, reserve)


def per_partition(count: int, partitions: int) -> int:
    """Split one level's count over its partitions (each asked for at least one)."""
    return max(1, -(-count // partitions))
