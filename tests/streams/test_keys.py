"""Composed keys never let two different inputs share a record."""

from __future__ import annotations

from streams import QueueManager, keys

from .conftest import PARTITIONS


def colliding_users() -> tuple[str, str]:
    """Two user ids ``u`` and ``u + ":x"`` in the same partition (so the old keys met)."""
    i = 0
    while True:
        user = f"a{i}"
        if keys.partition_of(user, PARTITIONS) == keys.partition_of(f"{user}:x", PARTITIONS):
            return user, f"{user}:x"
        i += 1


def test_idempotency_keys_of_different_accounts_do_not_collide(qm: QueueManager) -> None:
    first, second = colliding_users()
    for user in (first, second):
        qm.register_user(user, f"{user.replace(':', '.')}@example.com")
        qm.purchase(user, 100, transaction_id="tx-1")
    one = qm.use(first, 10, "a", idempotency_key="x:pay-1")
    two = qm.use(second, 20, "b", idempotency_key="pay-1")  # was: IdempotencyKeyReused
    assert (one.event_id, one.balance, one.duplicate) == (f"{first}:3", 90, False)
    assert (two.event_id, two.balance, two.duplicate) == (f"{second}:3", 80, False)
    # and each key still replays its own first response
    assert qm.use(second, 20, "b", idempotency_key="pay-1") == two.__class__(
        event_id=two.event_id, user_id=second, version=3, balance=80, duplicate=True
    )
    assert qm.use(first, 10, "a", idempotency_key="x:pay-1").event_id == one.event_id
    p = keys.partition_of(first, PARTITIONS)
    assert keys.idempotency(p, first, "x:pay-1") != keys.idempotency(p, second, "pay-1")
