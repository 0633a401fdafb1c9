"""The ``credit_scores`` read model: ``ledger.scores.credit_score`` of each account.

{_id: user_id, score, version, purchased_total, used_total, updated_at}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ledger.events import Event
from ledger.scores import credit_score
from streams.times import utc

from .projection import Recorded, Upsert, Write, coalesce
from .store import CREDIT_SCORES


def score_fields(event: Event) -> dict[str, Any]:
    a = event.after
    return {
        "score": credit_score(a, event.version),
        "version": event.version,
        "purchased_total": a.purchased,
        "used_total": a.used,
        "updated_at": utc(event.at_ms),
    }


class CreditScores:
    name = "credit_scores"
    collection = CREDIT_SCORES

    def plan(self, batch: Sequence[Recorded]) -> Sequence[Write]:
        return [
            Upsert(key=r.event.user_id, version=r.event.version, fields=score_fields(r.event))
            for r in coalesce(batch)
        ]
