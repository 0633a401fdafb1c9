"""Synthetic credit traffic for the demo and the benchmarks.

A deterministic (seeded) mix: purchases, uses (some of which overdraw and must
be refused), adjustments both ways, and repeated purchases (same transaction id)
that must be recognised as duplicates.

Credit holds (``hold_traffic``): a job reserves an estimate (a hold), then is
charged what it used (a capture of a random part, the rest released) or
cancelled (a release); some holds are left to expire. A hold's id is only
known once it is appended, so the caller feeds the holds it made back in
(``OpenHolds.add`` with each ``Appended``) and later rounds settle them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from ledger.commands import Adjust, Capture, Command, Hold, Purchase, RegisterUser, Release, Use


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


@dataclass
class OpenHolds:
    """Holds made and not yet settled by the traffic: (user, hold id, amount)."""

    holds: list[tuple[str, str, int]] = field(default_factory=list)

    def add(self, user_id: str, hold_id: str, amount: int) -> None:
        if hold_id:
            self.holds.append((user_id, hold_id, amount))


def hold_traffic(
    users: list[str], count: int, open_holds: OpenHolds, seed: int = 7
) -> Iterator[Command]:
    """``count`` hold commands: new holds (10-300 credits, 30 s to 10 min; one in
    ten for 2 s, left to expire), and settlements of ``open_holds`` — a capture
    of a random part (70%) or a release. Each settled hold leaves ``open_holds``."""
    rng = random.Random(seed)
    for _ in range(count):
        if open_holds.holds and rng.random() < 0.5:
            user, hold_id, amount = open_holds.holds.pop(rng.randrange(len(open_holds.holds)))
            if rng.random() < 0.7:
                yield Capture(user_id=user, hold_id=hold_id, amount=rng.randint(1, amount))
            else:
                yield Release(user_id=user, hold_id=hold_id)
        else:
            yield Hold(
                user_id=rng.choice(users),
                amount=rng.choice((10, 40, 120, 300)),
                reason=rng.choice(("render-job", "export", "model-run")),
                expires_in_s=rng.choice((2, 30, 60, 600, 600, 600, 600, 600, 600, 600)),
            )


_KINDS: dict[type, str] = {
    RegisterUser: "register_user",
    Purchase: "purchase",
    Use: "use",
    Adjust: "adjust",
    Hold: "hold",
    Capture: "capture",
    Release: "release",
}


def as_batch_item(command: Command) -> dict[str, object]:
    """The JSON item ``POST /api/events:batch`` takes for a command."""
    fields = {k: v for k, v in asdict(command).items() if v is not None}
    return {"kind": _KINDS[type(command)], **fields}
