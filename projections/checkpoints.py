"""Checkpoints: how far each projection has applied each stream.

    {_id: <projection name>, positions: {<stream key>: "<ms>-<seq>" zero-padded},
     updated_at}

Positions are zero-padded so ``$max`` on strings orders them like stream ids.
They report progress (and lag); correctness never depends on them: writes are
version-guarded and the consumer group holds what is still pending.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from pymongo.collection import Collection

from .store import CHECKPOINTS, Document

MS_DIGITS, SEQ_DIGITS = 15, 10


def pad(entry_id: str) -> str:
    ms, seq = entry_id.split("-")
    return f"{int(ms):0{MS_DIGITS}d}-{int(seq):0{SEQ_DIGITS}d}"


def unpad(padded: str) -> str:
    ms, seq = padded.split("-")
    return f"{int(ms)}-{int(seq)}"


def advance(coll: Collection[Document], projection: str, positions: Mapping[str, str]) -> None:
    """Move the projection's positions forward (never back)."""
    if not positions:
        return
    coll.update_one(
        {"_id": projection},
        {
            "$max": {f"positions.{s}": pad(e) for s, e in positions.items()},
            "$set": {"updated_at": datetime.now(UTC)},
        },
        upsert=True,
    )


def positions(coll: Collection[Document], projection: str) -> dict[str, str]:
    doc = coll.find_one({"_id": projection}) or {}
    return {s: unpad(p) for s, p in (doc.get("positions") or {}).items()}


__all__ = ["CHECKPOINTS", "advance", "pad", "positions", "unpad"]
