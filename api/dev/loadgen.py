"""Synthetic credit traffic for the demo and the benchmarks.

A deterministic (seeded) mix: purchases, uses (some of which overdraw and must
be refused), adjustments both ways, and repeated purchases (same transaction id)
that must be recognised as duplicates.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict

from ledger.commands import Adjust, Command, Purchase, RegisterUser, Use


def user_ids(count: int, prefix: str = "user") -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(count)]


def registrations(users: list[str]) -> list[Command]:
    return [RegisterUser(user_id=u, email=f"{u}@example.com") for u in users]


def credit_traffic(users: list[str], count: int, seed: int = 7) -> Iterator[Command]:
    """``count`` credit commands over ``users``."""
    rng = random.Random(seed)
    bought: list[Purchase] = []
    for i in range(count):
        user = rng.choice(users)
        roll = rng.random()
        if roll < 0.40:
            p = Purchase(
                user_id=user,
                amount=rng.choice((100, 250, 500, 1000)),
                currency="USD",
                transaction_id=f"tx-{seed}-{i}",
            )
            bought.append(p)
            yield p
        elif roll < 0.45 and bought:
            yield rng.choice(bought)  # a client retry: must be a duplicate, not a new event
        elif roll < 0.90:
            yield Use(
                user_id=user,
                amount=rng.choice((10, 50, 120, 400, 900)),
                reason=rng.choice(("api-call", "report", "export")),
            )
        else:
            yield Adjust(
                user_id=user,
                delta=rng.choice((-200, -50, 25, 100)),
                reason=rng.choice(("goodwill", "chargeback", "correction")),
            )


def as_batch_item(command: Command) -> dict[str, object]:
    """The JSON item ``POST /api/events:batch`` takes for a command."""
    kind = {RegisterUser: "register_user", Purchase: "purchase", Use: "use", Adjust: "adjust"}[
        type(command)
    ]
    return {"kind": kind, **asdict(command)}
