"""The priority streams read straight from Redis, for tests and benchmarks.

Every entry of every priority stream, in pages, and each account's events from
them. Production reads the log through ``projections.eventlog`` (streams joined with
the archive, since streams may be trimmed); tests and benchmarks want what the
streams themselves hold, so this lives beside them and is not shipped.

An account's events may sit in different priority streams (each append picks
its priority), so consumers that need an account's history order it by version.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping

from redis.typing import EncodableT, FieldT

from ledger.events import Event
from streams import keys
from streams.codec import TASK_KIND, decode_event
from streams.connection import RedisClient, translate
from streams.replies import entries as stream_entries


def iter_entries(
    client: RedisClient, partitions: int, page: int = 1000
) -> Iterator[tuple[str, str, Mapping[bytes, bytes]]]:
    """(stream, entry id, fields) of every entry, stream by stream, oldest first."""
    for p in keys.partitions(partitions):
        for level in keys.LEVELS_DESC:
            stream = keys.stream(p, level)
            start = "-"
            while True:
                with translate():
                    entries = stream_entries(client, stream, min=start, count=page)
                for entry_id, fields in entries:
                    yield stream, entry_id.decode(), fields
                if len(entries) < page:
                    break
                start = "(" + entries[-1][0].decode()


def keys_matching(client: RedisClient, pattern: str = "*") -> set[str]:
    """Every key matching ``pattern``, on every master of a Cluster (``SCAN`` goes to
    each; ``KEYS`` would ask one node only, and miss what the others hold)."""
    return {key.decode() for key in client.scan_iter(match=pattern, count=1000)}


def xadd_fields(fields: Mapping[bytes, bytes] | Mapping[str, str]) -> dict[FieldT, EncodableT]:
    """A copy of an entry's fields typed as ``XADD`` takes them (redis-py's dict is invariant)."""
    return {name: value for name, value in fields.items()}


def account_histories(client: RedisClient, partitions: int) -> dict[str, list[Event]]:
    """Every account's events, ordered by version (tasks and requeued copies skipped)."""
    out: dict[str, list[Event]] = defaultdict(list)
    for _, _, fields in iter_entries(client, partitions):
        if fields.get(b"k", b"").decode() == TASK_KIND or b"rq" in fields:
            continue
        event = decode_event(fields)
        out[event.user_id].append(event)
    for events in out.values():
        events.sort(key=lambda e: e.version)
    return dict(out)
