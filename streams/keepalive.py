"""Keep the claim of entries a worker is still running (``lua/keepalive.lua``).

An entry pending for ``claim_idle_ms`` is taken over by another consumer, so
without this a handler running longer than that would run twice at once. While
a round runs, one thread per process renews the claim of every entry the round
holds (``XCLAIM … JUSTID`` by its own consumer: the idle time restarts, no
delivery is counted), every ``every_ms`` — a quarter of ``claim_idle_ms``. A
round shorter than that costs nothing. The thread runs while the process's
workers do (``Worker.run``, ``Worker.run_until_idle``); a bare ``Worker.step``
renews nothing. When the process dies the renewals
stop, and its entries are taken over ``claim_idle_ms`` after the last one.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from . import keys
from .connection import RedisClient, translate
from .processor import Delivery
from .scripts import Call, Scripts, run_many

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Held:
    group: str
    consumer: str
    deliveries: Sequence[Delivery]
    since: float


class KeepAlive:
    """Renews the claims of the rounds running in this process."""

    def __init__(self, client: RedisClient, scripts: Scripts, every_ms: int) -> None:
        self.redis = client
        self.scripts = scripts
        self.every_s = max(every_ms, 1) / 1000
        self.renewed = 0
        """Entries whose claim was renewed (tests, figures)."""
        self._held: dict[int, _Held] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._users = 0

    @contextmanager
    def running(self) -> Iterator[None]:
        """Renew claims while the block runs (``Worker.run``, ``run_until_idle``);
        the consumers of a process share the one thread, which ends when the last
        of them leaves the block."""
        with self._lock:
            self._users += 1
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="ledger-keepalive", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                thread = self._thread if self._users == 0 else None
                if thread is not None:
                    self._thread = None
                    self._stop.set()
            if thread is not None:
                thread.join()

    @contextmanager
    def holding(self, group: str, consumer: str, deliveries: Sequence[Delivery]) -> Iterator[None]:
        """Renew the claims of ``deliveries`` for as long as the block runs (while
        ``running``)."""
        if not deliveries:
            yield
            return
        token = next(self._ids)
        with self._lock:
            self._held[token] = _Held(group, consumer, deliveries, time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                del self._held[token]

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            now = time.monotonic()
            with self._lock:
                due = [h for h in self._held.values() if now - h.since >= self.every_s]
            if due:
                try:
                    self.renew(due)
                except Exception as exc:  # the next turn tries again
                    log.warning("renewing the claims of running entries failed: %s", exc)

    def renew(self, held: Sequence[_Held]) -> int:
        """One ``keepalive.lua`` call per (partition, consumer) of ``held``."""
        by: dict[tuple[keys.Partition, str, str], list[str]] = defaultdict(list)
        for h in held:
            for d in h.deliveries:
                by[(d.partition, h.group, h.consumer)].append(f"{5 - int(d.level)}|{d.entry_id}")
        calls: list[Call] = [
            (
                self.scripts.keepalive,
                [keys.stream(p, lv) for lv in keys.LEVELS_DESC],
                [group, consumer, *names],
            )
            for (p, group, consumer), names in by.items()
        ]
        with translate():
            n = sum(int(r) for r in run_many(self.redis, calls))
        self.renewed += n
        return n
