"""Handlers the demo's workers import (``ledger worker --import api.demo_handlers``).

Written exactly as handlers of the original system were: ``handler(data,
db_manager) -> bool``, registered on a ``QueueManager``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams import default_registry
from streams.handlers import DBManager


def credit_calculation(data: Mapping[str, Any], db_manager: DBManager) -> bool:
    """The original example: store a user's credit calculation."""
    purchases = db_manager.find_many("credit_purchases", {"user_id": data["user_id"]}, limit=1000)
    total = sum(int(p.get("amount", 0)) for p in purchases)
    db_manager.insert("credit_calculations", {"user_id": data["user_id"], "purchased_seen": total})
    return True


def send_notification(data: Mapping[str, Any], db_manager: DBManager) -> bool:
    """Fails for undeliverable addresses, to show retries and dead letters."""
    if str(data.get("to", "")).endswith(".invalid"):
        raise ConnectionError(f"cannot deliver to {data['to']}")
    db_manager.insert("notifications", {"to": data.get("to"), "text": data.get("text")})
    return True


default_registry.register("credit_calculation", credit_calculation)
default_registry.register("send_notification", send_notification)
