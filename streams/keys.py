"""Every Redis key the ledger uses, in one place.

Keys are partitioned by a hash tag, ``ledger:{pN}:…``, so everything one script
touches lives in one Cluster slot: an account's state, its idempotency records,
its partition's priority streams, retry and schedule sets, dead letters and
task status hashes.

    ledger:meta                          hash  partitions (fixed for a deployment)
    ledger:{pN}:<level>                stream  events and tasks of a level: critical|high|normal|low
    ledger:{pN}:acct:<user_id>           hash  version balance purchased used head email
    ledger:{pN}:idem:<n>:<user_id>:<key> hash  e v b f   (first response of an Idempotency-Key; TTL)
                                               n = len(user_id): both parts may hold ":"
    ledger:{pN}:txn:<user_id>            hash  <transaction_id> -> "e|v|b|f" (kept forever)
    ledger:{pN}:task:<task_id>           hash  status attempts queue_name task_type … (TTL once
                                               on a stream; none while scheduled: "data" and
                                               "ttl" wait there for the scheduler)
    ledger:{pN}:attempts                 hash  <group>|<level>|<entry id> -> deliveries so far
    ledger:{pN}:retry:<group>            zset  <level>|<entry id> by due time (ms)
    ledger:{pN}:scheduled                zset  <task_id> by due time (ms)
    ledger:{pN}:dead                     stream  dead letters of this partition
    ledger:{pN}:stats                    hash  <counter>:<queue> -> int
    ledger:{pN}:cursor                   hash  <group>|<level> -> XAUTOCLAIM cursor
    ledger:{pN}:lat:<queue>              list  latest 512 latencies (ms) of processed entries
    ledger:{pN}:tput:<queue>             hash  10-second bucket -> entries processed
    ledger:rl:<bucket>                   hash  tokens ts: an API token bucket (api/ratelimit.py;
                                               no hash tag; expires once it would be full again)
                                               bucket = anonymous | addr:<client address>
                                                      | key:<sha256(API key)[:16] hex>

Where a key or field joins several values, at most one of them is free text, or
the free text is length-prefixed: user ids and Idempotency-Keys may both hold
":", so ``idem:<user>:<key>`` would let ``a0`` + ``x:k`` and ``a0:x`` + ``k``
share a record. Levels are one digit and entry ids ``<ms>-<seq>``, so the
``|``-joined fields split from the right; ``<counter>`` is a fixed word without
":"; group and queue names come from configuration, not from requests.
Stream entry ids compare as numbers (``streams.ids.parse_id``), never as text.
"""

from __future__ import annotations

import zlib

from ledger.tasks import Priority

PREFIX = "ledger"
META = f"{PREFIX}:meta"

LEVEL_NAMES: dict[Priority, str] = {
    Priority.CRITICAL: "critical",
    Priority.HIGH: "high",
    Priority.NORMAL: "normal",
    Priority.LOW: "low",
}
LEVEL_BY_NAME = {name: level for level, name in LEVEL_NAMES.items()}
LEVELS_DESC: tuple[Priority, ...] = tuple(sorted(Priority, reverse=True))


def partition_of(key: str, partitions: int) -> int:
    """The partition an account or task lives in (stable across processes)."""
    return zlib.crc32(key.encode("utf-8")) % partitions


def tag(p: int) -> str:
    return f"{PREFIX}:{{p{p}}}"


def stream(p: int, level: Priority) -> str:
    return f"{tag(p)}:{LEVEL_NAMES[level]}"


def account(p: int, user_id: str) -> str:
    return f"{tag(p)}:acct:{user_id}"


def idempotency(p: int, user_id: str, key: str) -> str:
    """Length-prefixed: the user id and the key may both contain ":"."""
    return f"{tag(p)}:idem:{len(user_id)}:{user_id}:{key}"


def transactions(p: int, user_id: str) -> str:
    return f"{tag(p)}:txn:{user_id}"


def task(p: int, task_id: str) -> str:
    return f"{tag(p)}:task:{task_id}"


def attempts(p: int) -> str:
    return f"{tag(p)}:attempts"


def retry(p: int, group: str) -> str:
    return f"{tag(p)}:retry:{group}"


def scheduled(p: int) -> str:
    return f"{tag(p)}:scheduled"


def dead(p: int) -> str:
    return f"{tag(p)}:dead"


def stats(p: int) -> str:
    return f"{tag(p)}:stats"


def cursor(p: int) -> str:
    return f"{tag(p)}:cursor"


def parse_stream(key: str) -> tuple[int, Priority]:
    """(partition, level) of a stream key made by ``stream``."""
    _, tagged, level = key.split(":")
    return int(tagged[2:-1]), LEVEL_BY_NAME[level]


def latencies(p: int, queue: str) -> str:
    return f"{tag(p)}:lat:{queue}"


def throughput(p: int, queue: str) -> str:
    return f"{tag(p)}:tput:{queue}"
