"""How much of a round each partition gets (the per-level policy is in ``lua/read.lua``).

A worker's round reads up to ``batch`` entries; each partition gets an equal
share. Within a partition, levels are read highest first, each taking what is
left of the share, and each lower level still gets one read when the higher
ones filled it: CRITICAL is served first, and LOW never starves.
"""

from __future__ import annotations


def per_partition(count: int, partitions: int) -> int:
    """Split a round's count over the partitions (each asked for at least one)."""
    return max(1, -(-count // partitions))
