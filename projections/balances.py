"""The ``balances`` read model: one document per account, its latest state.

{_id: user_id, balance, version, purchased_total, used_total, updated_at}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ledger.events import Event
from streams.times import utc

from .projection import Recorded, Upsert, Write, coalesce
from .store import BALANCES


def balance_fields(event: Event) -> dict[str, Any]:
    a = event.after
    return {
        "balance": a.balance,
        "version": event.version,
        "purchased_total": a.purchased,
        "used_total": a.used,
        "updated_at": utc(event.at_ms),
    }


class Balances:
    name = "balances"
    collection = BALANCES

    def __init__(self, *, coalescing: bool = True) -> None:
        self.coalescing = coalescing

    def plan(self, batch: Sequence[Recorded]) -> Sequence[Write]:
        chosen = coalesce(batch) if self.coalescing else batch
        return [
            Upsert(key=r.event.user_id, version=r.event.version, fields=balance_fields(r.event))
            for r in chosen
        ]
