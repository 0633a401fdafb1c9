"""Read-your-writes: wait (bounded) until an account's version is projected."""

from __future__ import annotations

import time
from typing import Any

from pymongo.database import Database

from .store import BALANCES, Document


def wait_for_version(
    db: Database[Document],
    user_id: str,
    min_version: int,
    *,
    timeout: float = 2.0,
    poll: float = 0.02,
) -> dict[str, Any] | None:
    """The balance document once it has ``version >= min_version``; None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        doc = db[BALANCES].find_one({"_id": user_id})
        if doc is not None and doc.get("version", 0) >= min_version:
            return dict(doc)
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
