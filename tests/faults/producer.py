"""A producer process of the storm: ``python -m tests.faults.producer SPEC_JSON``.

It appends mixed credit traffic through the HTTP API (``mode == "http"``) or the
Python client (``mode == "client"``) and writes one JSON line per outcome to
``spec["out"]`` (each with ``at``, when it was answered):

- ``ack``: an acknowledged append (key, op, user, event_id, version, balance;
  hold_id for a hold) — purchases, uses, adjustments, holds (some expiring after
  1-2 s, for the schedulers to release), captures of a part or all, releases;
- ``refused``: a 409 / domain refusal (code);
- ``task``: an acknowledged enqueue (task id, ref, style, fail, parents: the task
  ids it depends on, some of this producer's latest tasks);
- ``dup``: a deliberate repeat of an acknowledged key, and what it answered;
- ``gave_up`` / ``bad``: an operation never acknowledged, or an answer the
  ledger must never give (a 5xx other than 503, a malformed body);
- ``slow``: an operation that took more than ``SLOW_S`` to answer, and why
  (the reasons of its retries; no invariant depends on it).

Every operation has its own Idempotency-Key and is retried with that same key
after a connection error or a 503 (Redis, the API or both may be down), so an
append that happened but whose reply was lost is recognised, not doubled.
"""

from __future__ import annotations

import http.client
import json
import random
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

from ledger.errors import LedgerError
from streams import Appended, QueueManager, StreamsConfig
from streams.errors import Unavailable

RETRY_FOR_S = 60.0
"""How long one operation is retried before the producer gives up on it."""
SLOW_S = 5.0
"""An operation answered (or given up) after longer is recorded as ``slow``, with why."""


class Retry(Exception):
    """The attempt's outcome is unknown: try again with the same key."""


def _reason(exc: BaseException) -> str:
    """A short, stable name for a failed attempt (``URLError`` wraps the socket error)."""
    inner = getattr(exc, "reason", None)
    if isinstance(inner, BaseException):
        exc = inner
    return f"{type(exc).__name__}: {exc}"[:120]


class Producer:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.rng = random.Random(spec["seed"])
        self.name = spec["name"]
        self.out = open(spec["out"], "a", buffering=1)  # noqa: SIM115 - closed in run()
        self.qm: QueueManager | None = None
        if spec["mode"] == "client":
            self.qm = QueueManager(
                config=StreamsConfig(
                    redis_url=spec["redis_url"],  # redis://… or redis+cluster://…
                    partitions=spec["partitions"],
                    wait_replicas=spec.get("wait_replicas", 0),
                )
            )

    def write(self, **record: Any) -> None:
        """One outcome, stamped with its wall-clock time (``at``, seconds)."""
        self.out.write(json.dumps({**record, "at": round(time.time(), 3)}) + "\n")

    # -- one attempt ----------------------------------------------------------
    def _http(
        self, method: str, path: str, body: dict[str, Any], key: str
    ) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(
            self.spec["api_url"] + path,
            data=json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json", "Idempotency-Key": key},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                status, raw = exc.code, exc.read()
            except (OSError, http.client.HTTPException) as lost:  # the API died mid-answer
                raise Retry(f"{exc.code}, then {type(lost).__name__}") from None
            finally:
                exc.close()
            if status == 503:
                raise Retry(f"503 {raw[:120].decode(errors='replace')}") from None
            try:
                return status, json.loads(raw)
            except ValueError:
                return status, {"unparsed": raw.decode(errors="replace")[:200]}
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            raise Retry(_reason(exc)) from None

    def _client(self, op: str, args: dict[str, Any], key: str) -> tuple[int, dict[str, Any]]:
        assert self.qm is not None
        try:
            if op == "task":
                task_id = self.qm.enqueue(idempotency_key=key, **args)
                return 202, {"task_id": task_id}
            calls: dict[str, Callable[..., Appended]] = {
                "register": self.qm.register_user,
                "purchase": self.qm.purchase,
                "use": self.qm.use,
                "adjust": self.qm.adjust,
                "hold": self.qm.hold,
                "capture": self.qm.capture,
                "release": self.qm.release,
            }
            call = calls[op]
            done = call(idempotency_key=key, **args)
        except Unavailable as exc:
            raise Retry(str(exc)[:120]) from None
        except LedgerError as exc:
            return 409, {"error": exc.code}
        return 201, {
            "event_id": done.event_id,
            "version": done.version,
            "balance": done.balance,
            "user_id": done.user_id,
            **({"hold_id": done.hold_id} if op == "hold" else {}),
        }

    def attempt(self, op: str, args: dict[str, Any], key: str) -> tuple[int, dict[str, Any]]:
        if self.qm is not None:
            return self._client(op, args, key)
        user = args.get("user_id", "")
        if op == "register":
            return self._http("POST", "/api/users", args, key)
        if op == "task":
            return self._http("POST", "/api/queue/enqueue", args, key)
        body = {k: v for k, v in args.items() if k not in ("user_id", "hold_id")}
        if op in ("capture", "release"):
            path = f"holds/{args['hold_id']}/{op}"
        else:
            path = {"purchase": "purchases", "use": "usage", "adjust": "adjustments"}.get(
                op, "holds"
            )
        return self._http("POST", f"/api/accounts/{user}/{path}", body, key)

    def until_answered(
        self, op: str, args: dict[str, Any], key: str
    ) -> tuple[int, dict[str, Any]] | None:
        began = time.monotonic()
        deadline = began + RETRY_FOR_S
        retries = 0
        why: Counter[str] = Counter()
        try:
            while time.monotonic() < deadline:
                try:
                    return self.attempt(op, args, key)
                except Retry as exc:
                    retries += 1
                    why[str(exc)] += 1
                    time.sleep(min(0.5, 0.02 * retries))
            return None
        finally:
            took = time.monotonic() - began
            if took > SLOW_S:  # for the reader of a failed storm: what held it up
                self.write(t="slow", key=key, op=op, s=round(took, 1), why=dict(why.most_common(5)))

    # -- traffic ------------------------------------------------------------------
    def do(self, op: str, args: dict[str, Any], key: str, **extra: Any) -> dict[str, Any] | None:
        answer = self.until_answered(op, args, key)
        if answer is None:
            self.write(t="gave_up", key=key, op=op, user=args.get("user_id"))
            return None
        status, body = answer
        if op == "task" and status == 202 and "task_id" in body:
            self.write(t="task", key=key, task_id=body["task_id"], **extra)
            return body
        if status == 201 and "event_id" in body:
            self.write(
                t="ack",
                key=key,
                op=op,
                user=body["user_id"],
                event_id=body["event_id"],
                version=body["version"],
                balance=body["balance"],
                amount=args.get("amount", args.get("delta", 0)),
                hold_id=body.get("hold_id"),
            )
            return body
        if status == 409:
            self.write(
                t="refused", key=key, op=op, user=args.get("user_id"), code=body.get("error")
            )
            return None
        self.write(t="bad", key=key, op=op, status=status, body=body)
        return None

    def run(self) -> None:
        spec, rng, name = self.spec, self.rng, self.name
        users: list[str] = spec["users"]
        try:
            for u in users:  # every producer registers every user with the same key
                self.do("register", {"user_id": u, "email": f"{u}@example.com"}, f"reg-{u}")
            acked: list[tuple[str, dict[str, Any], str, str]] = []
            recent: list[str] = []  # this producer's latest custom tasks, to depend on
            holds: list[tuple[str, str]] = []  # (user, hold id) of its holds not yet closed
            stop_at = time.monotonic() + spec["seconds"]
            i = 0
            while time.monotonic() < stop_at:
                i += 1
                key = f"{name}-{i}"
                user = rng.choice(users)
                roll = rng.random()
                if roll < 0.05 and acked:
                    op, args, k, first = rng.choice(acked)
                    answer = self.until_answered(op, args, k)
                    again = answer[1].get("event_id") if answer else None
                    self.write(
                        t="dup",
                        key=k,
                        first=first,
                        again=again,
                        status=answer[0] if answer else None,
                    )
                    continue
                if roll < 0.15:
                    ref = f"{name}-task-{i}"
                    if rng.random() < 0.5:
                        fail = rng.random() < 0.15
                        args = {
                            "queue_name": rng.choice(["default", "high_priority"]),
                            "task_type": "fault_task",
                            "task_data": {"ref": ref, "fail": fail},
                            "priority": rng.choice([1, 2, 3, 4]),
                            "delay": rng.choice([0, 0, 0, 0.3]),
                        }
                        style = "custom"
                        if recent and rng.random() < 0.3:  # waits for earlier tasks
                            args["depends_on"] = rng.sample(
                                recent, min(len(recent), rng.randint(1, 2))
                            )
                    else:
                        fail = False
                        args = {
                            "queue_name": "low_priority",
                            "task_type": "analytics_event",
                            "task_data": {
                                "operation": "insert",
                                "collection": "notifications",
                                "data": {"ref": ref},
                            },
                            "priority": 1,
                            "delay": 0,
                        }
                        style = "original"
                    done = self.do(
                        "task",
                        args,
                        key,
                        ref=ref,
                        style=style,
                        fail=fail,
                        parents=args.get("depends_on", []),
                    )
                    if done is not None and style == "custom":
                        recent = [*recent, done["task_id"]][-10:]
                    continue
                if 0.40 <= roll < 0.54:  # reserve, then capture a part or release
                    if roll < 0.48 or not holds:
                        op, args = (
                            "hold",
                            {
                                "user_id": user,
                                "amount": rng.choice([20, 60, 150]),
                                "expires_in_s": rng.choice([1, 2, 30]),
                                "reason": "storm",
                            },
                        )
                    else:
                        owner, hold_id = holds.pop(rng.randrange(len(holds)))
                        op, args = (
                            rng.choice(["capture", "capture", "release"]),
                            {
                                "user_id": owner,
                                "hold_id": hold_id,
                            },
                        )
                        if op == "capture" and rng.random() < 0.6:
                            args["amount"] = rng.choice([1, 10, 20])  # at most the held 20
                    body = self.do(op, args, key)
                    if body is not None:
                        acked.append((op, args, key, body["event_id"]))
                        if op == "hold":
                            holds.append((user, body["hold_id"]))
                    continue
                if roll < 0.40:
                    op, args = (
                        "purchase",
                        {
                            "user_id": user,
                            "amount": rng.choice([50, 100, 250]),
                            "currency": "USD",
                            "transaction_id": key,
                        },
                    )
                elif roll < 0.90:
                    op, args = (
                        "use",
                        {
                            "user_id": user,
                            "amount": rng.choice([10, 40, 120, 300]),
                            "reason": "storm",
                        },
                    )
                else:
                    op, args = (
                        "adjust",
                        {
                            "user_id": user,
                            "delta": rng.choice([-80, -20, 15, 60]),
                            "reason": "storm",
                        },
                    )
                body = self.do(op, args, key)
                if body is not None:
                    acked.append((op, args, key, body["event_id"]))
                if spec.get("pause_s"):
                    time.sleep(spec["pause_s"])
        finally:
            self.out.close()
            if self.qm is not None:
                self.qm.close()


if __name__ == "__main__":
    Producer(json.loads(sys.argv[1])).run()
