"""The ``balances`` read model: one document per account, its latest state.

{_id: user_id, balance, held, available, version, purchased_total, used_total, updated_at}

``held`` is the sum of the account's open credit holds after the event and
``available = balance - held`` (what a use, a hold or a negative adjustment may
take). Every event carries ``held`` (``Totals.held``), so "newer version wins"
keeps both exact like the balance.
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
        "held": a.held,
        "available": a.available,
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
