"""``ledger audit``: re-check every account against its log and every copy of it.

For each account the audit reads, in this order (so that a live system, still
appending and projecting, is not mistaken for a broken one):

1. the consumer groups of its streams: below which entry each group has
   acknowledged everything (``log.acknowledged``), and where each stream starts
   (``log.stream_heads``);
2. its ``balances`` and ``credit_scores`` documents;
3. its Redis account state (hash ``ledger:{<tag>}:acct:<user>``, ``streams.keys``);
4. the log: its streams, then the ``events`` archive (``log.read_sources``).

and then checks:

- the log itself: versions run 1, 2, 3 … and every event links to the previous
  one's hash and hashes to its own fields (``ledger.chain.verify``: SHA-1 over
  ``<len>:<value>`` pieces, ``prev_hash`` included, so a changed, missing,
  inserted or reordered event breaks the chain); then the fold
  (``ledger.accounts.apply``): totals follow from amounts, no overdraft;
- the two copies of each event: the archive document against the stream entry,
  field by field (position included); an archive document whose ``_id`` is not
  its content's id; an event in two stream entries; an entry that does not
  decode; an archived event missing from the middle of its stream (``XDEL``:
  trimming only ever removes a stream's oldest entries); a stream entry the
  archive projector has acknowledged but the archive lacks;
- the Redis account state against the event of its version (version, balance,
  purchased, used, head hash, email; with credit holds also ``held`` and
  ``hseq``, the holds made, from the fold); a state newer than the log means
  events are missing from the log;
- credit holds: the fold checks every hold event (a new hold takes the next id;
  a capture, release or expiry closes a hold that is open, of the amount it
  says, before or after its deadline as its kind requires) and that ``held`` is
  the sum of the open holds and never above the balance, at every version; the
  account's open holds in Redis (``ledger:{<tag>}:holds:<user>``, read with its
  state in one MULTI) must be exactly the fold's open holds at the state's
  version (amount, expiry, creation time, reason), and each must be in the
  partition's ``holds-due`` set at its expiry (else the scheduler would never
  release it);
- each view document against what its projection writes for the event of the
  document's version (every field, no more, no less). A document at an older
  version than the log is *lagging* (a note, not a mismatch) as long as its
  projector has not acknowledged the newer events and can still read them; once
  it has acknowledged them, or they were trimmed from their stream before it read
  them (so it never will), the document is stale: a mismatch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo.database import Database

from ledger.accounts import Account, apply
from ledger.chain import verify
from ledger.errors import ChainBroken, IntegrityError, VersionGap
from ledger.events import Event, UserRegistered
from streams import keys
from streams.codec import event_id
from streams.connection import RedisClient, translate
from streams.holds import read_together
from streams.ids import EntryId, parse_id

from .archive import archive_document
from .balances import balance_fields
from .eventlog import (
    PAGE,
    LoggedEvent,
    LogSources,
    acknowledged,
    read_sources,
    stream_heads,
    streams_of,
)
from .projection import Recorded
from .scores import score_fields
from .store import BALANCES, CREDIT_SCORES, EVENTS, Document

# what a Mismatch is about
UNDECODABLE = "undecodable"
DUPLICATE = "duplicate_entry"
ARCHIVE_ID = "archive_id"
ARCHIVE_DIFFERS = "archive_differs"
DELETED = "deleted_from_stream"
NOT_ARCHIVED = "not_archived"
VERSION_GAP = "version_gap"
CHAIN_BROKEN = "chain_broken"
INTEGRITY = "integrity"
STATE = "account_state"
NO_STATE = "no_account_state"
MISSING_EVENTS = "missing_events"
VIEW_WITHOUT_EVENTS = "view_without_events"
LAGGING = "lagging"
OPEN_HOLDS = "open_holds"

ViewFields = Callable[[Event], dict[str, Any]]
VIEWS: dict[str, ViewFields] = {BALANCES: balance_fields, CREDIT_SCORES: score_fields}
"""Each view and the fields its projection writes for an event."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Mismatch:
    """Something that differs: ``where`` it was found, what was ``expected`` there."""

    user_id: str
    what: str
    where: str
    expected: Any = None
    found: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "what": self.what,
            "where": self.where,
            "expected": _plain(self.expected),
            "found": _plain(self.found),
        }

    def __str__(self) -> str:
        return (
            f"{self.user_id}: {self.what} at {self.where}: expected {_show(self.expected)}, "
            f"found {_show(self.found)}"
        )


@dataclass(slots=True, kw_only=True)
class AuditReport:
    accounts: int = 0
    events: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    lagging: list[Mismatch] = field(default_factory=list)
    """Views behind the log whose projector has not yet acknowledged the newer events."""

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def users(self) -> list[str]:
        """The accounts with a mismatch."""
        return sorted({m.user_id for m in self.mismatches})

    def summary(self) -> str:
        n = len(self.mismatches)
        text = (
            f"audited {self.accounts} accounts, {self.events} events: "
            f"{n} {'mismatch' if n == 1 else 'mismatches'}"
        )
        if self.lagging:
            text += f" ({len(self.lagging)} views still catching up)"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "accounts": self.accounts,
            "events": self.events,
            "mismatched_accounts": self.users(),
            "mismatches": [m.as_dict() for m in self.mismatches],
            "lagging": [m.as_dict() for m in self.lagging],
        }


def audit(
    client: RedisClient,
    partitions: int,
    db: Database[Document],
    *,
    user: str | None = None,
    page: int = PAGE,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> AuditReport:
    """Audit every account (or ``user``'s); see the module doc for what is checked.

    ``progress`` is told ``(label, done, total or None)`` while the log is read
    (the CLI draws it).
    """
    streams = streams_of(partitions, user)
    marks = acknowledged(client, streams)
    heads = stream_heads(client, streams)
    views = {name: _documents(db, name, user, page) for name in VIEWS}
    states = _states(client, partitions, user)
    holds = _hold_states(client, partitions, states)
    counted = None if progress is None else (lambda n: progress("audit: reading the log", n, None))
    sources = read_sources(client, partitions, db, user=user, page=page, progress=counted)
    log = sources.log()

    report = AuditReport(events=sum(len(e) for e in log.values()))
    out = report.mismatches
    _check_sources(sources, log, marks, out)
    users = set(log) | set(states) | {u for docs in views.values() for u in docs}
    if user is not None:
        users &= {user}
    report.accounts = len(users)
    for name in sorted(users):
        events = log.get(name, [])
        _check_chain(name, events, out)
        _check_state(name, partitions, events, states.get(name), out, holds.get(name), client)
        for view, fields in VIEWS.items():
            owed = _owed_version(events, "proj:" + view, marks, heads)
            _check_view(view, fields, name, events, views[view].get(name), owed, report)
    return report


# -- the log and its copies -----------------------------------------------------


def _check_sources(
    sources: LogSources,
    log: Mapping[str, Sequence[LoggedEvent]],
    marks: Mapping[str, Mapping[str, EntryId]],
    out: list[Mismatch],
) -> None:
    for bad in sources.undecodable:
        out.append(
            Mismatch(
                user_id=bad.user_id,
                what=UNDECODABLE,
                where=bad.where,
                expected="a valid event",
                found=bad.error,
            )
        )
    for doc in sources.archive.values():
        if doc.event is None:
            continue
        content = event_id(doc.event.user_id, doc.event.version)
        if doc.doc_id != content:
            out.append(
                Mismatch(
                    user_id=doc.event.user_id,
                    what=ARCHIVE_ID,
                    where=doc.where,
                    expected=content,
                    found=doc.doc_id,
                )
            )
    for eid, copies in sources.stream_copies.items():
        if len(copies) > 1:
            out.append(
                Mismatch(
                    user_id=copies[0].event.user_id,
                    what=DUPLICATE,
                    where=", ".join(c.where for c in copies),
                    expected=f"one entry for event {eid}",
                    found=f"{len(copies)} entries",
                )
            )
    archive_group = "proj:" + EVENTS
    for events in log.values():
        for logged in events:
            arch, copy = logged.archived, logged.stream
            if arch is not None and copy is not None:
                requeued = sources.requeued.get(logged.id, set())
                _compare_archive(logged, arch.document, copy.stream, copy.entry_id, requeued, out)
            elif arch is not None:
                _check_archived_only(logged, sources, out)
            elif copy is not None:
                mark = marks.get(copy.stream, {}).get(archive_group)
                if mark is not None and parse_id(copy.entry_id) < mark:
                    out.append(
                        Mismatch(
                            user_id=logged.event.user_id,
                            what=NOT_ARCHIVED,
                            where=f"{EVENTS}/{logged.id}",
                            expected=f"the event of {copy.where}",
                            found=None,
                        )
                    )


def _compare_archive(
    logged: LoggedEvent,
    doc: Mapping[str, Any],
    stream: str,
    entry_id: str,
    requeued: set[tuple[str, str]],
    out: list[Mismatch],
) -> None:
    assert logged.stream is not None
    expected = archive_document(
        Recorded(stream=stream, entry_id=entry_id, event=logged.stream.event)
    )
    position = (doc.get("stream"), doc.get("entry_id"))
    if position in requeued:  # archived from a requeued copy: that position is right too
        expected.update(stream=position[0], entry_id=position[1])
    expected["_id"] = doc.get("_id")  # a wrong _id is reported as ARCHIVE_ID
    for key in sorted(set(expected) | set(doc), key=_field_order(expected)):
        want, got = expected.get(key, _ABSENT), doc.get(key, _ABSENT)
        if not _same(want, got):
            out.append(
                Mismatch(
                    user_id=logged.event.user_id,
                    what=ARCHIVE_DIFFERS,
                    where=f"{EVENTS}/{doc.get('_id')}.{key} vs {stream} {entry_id}",
                    expected=_opt(want),
                    found=_opt(got),
                )
            )


def _check_archived_only(logged: LoggedEvent, sources: LogSources, out: list[Mismatch]) -> None:
    arch = logged.archived
    assert arch is not None
    user = logged.event.user_id
    position = arch.position
    extent = sources.streams.get(position[0]) if position is not None else None
    if position is None or extent is None:
        out.append(
            Mismatch(
                user_id=user,
                what=ARCHIVE_DIFFERS,
                where=f"{arch.where}.stream",
                expected="a stream position of the account's partition",
                found=f"{arch.document.get('stream')!r} {arch.document.get('entry_id')!r}",
            )
        )
        return
    stream, entry_id = position
    if extent.deleted(entry_id):
        out.append(
            Mismatch(
                user_id=user,
                what=DELETED,
                where=f"{stream} {entry_id}",
                expected=f"the entry of {logged.id} (archived, not trimmed: "
                f"the stream starts at {extent.first_id})",
                found=None,
            )
        )
    elif entry_id in extent.present and (stream, entry_id) not in sources.requeued.get(
        logged.id, set()
    ):
        out.append(
            Mismatch(
                user_id=user,
                what=ARCHIVE_DIFFERS,
                where=f"{arch.where}.entry_id",
                expected=f"the position of {logged.id}",
                found=f"{stream} {entry_id}, which holds another entry",
            )
        )


def _check_chain(user: str, events: Sequence[LoggedEvent], out: list[Mismatch]) -> None:
    if not events:
        return
    by_version = {e.event.version: e for e in events}
    broken: IntegrityError | None = verify(e.event for e in events)
    if broken is None:
        account: Account | None = None
        for logged in events:
            try:
                account = apply(account, logged.event)
            except IntegrityError as exc:
                broken = exc
                break
    if broken is None:
        return
    if isinstance(broken, VersionGap):
        out.append(
            Mismatch(
                user_id=user,
                what=VERSION_GAP,
                where=f"log of {user}",
                expected=f"version {broken.expected}",
                found=f"version {broken.got}",
            )
        )
        return
    version = broken.version if isinstance(broken, ChainBroken) else 0
    at = by_version.get(version)
    where = _where(at) if at is not None else f"log of {user}"
    what = CHAIN_BROKEN if isinstance(broken, ChainBroken) else INTEGRITY
    out.append(
        Mismatch(
            user_id=user,
            what=what,
            where=where,
            expected="an event that verifies",
            found=broken.message,
        )
    )


# -- Redis account state ------------------------------------------------------------


def _states(client: RedisClient, partitions: int, user: str | None) -> dict[str, dict[str, str]]:
    """Decoded account hashes by user id."""
    if user is not None:
        names = [keys.account(keys.partition_of(user, partitions), user)]
    else:
        names = []
        with translate():
            for p in keys.partitions(partitions):
                prefix = keys.account(p, "")
                names.extend(
                    k.decode() if isinstance(k, bytes) else k
                    for k in client.scan_iter(match=_glob_escape(prefix) + "*", count=1000)
                )
    out: dict[str, dict[str, str]] = {}
    for start in range(0, len(names), PAGE):
        chunk = names[start : start + PAGE]
        with translate():
            pipe = client.pipeline(transaction=False)
            for name in chunk:
                pipe.hgetall(name)
            replies = pipe.execute()
        for name, raw in zip(chunk, replies, strict=True):
            if raw:
                owner = name.split(":acct:", 1)[1]
                out[owner] = {
                    k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()
                }
    return out


def _hold_states(
    client: RedisClient, partitions: int, states: dict[str, dict[str, str]]
) -> dict[str, dict[str, str]]:
    """For accounts that made holds: their state and open holds read together (MULTI,
    one slot), so a hold appended meanwhile cannot make them disagree; ``states``
    is updated in place with the state read here."""
    out: dict[str, dict[str, str]] = {}
    for user in [u for u, st in states.items() if "hseq" in st]:
        state, out[user] = read_together(client, partitions, user)
        if state:
            states[user] = state
    return out


def _due_scores(
    client: RedisClient, partitions: int, user: str, hold_ids: Sequence[str]
) -> list[float | bool | None]:
    """Each hold's score in ``holds-due``; True for a hold closed since the state was
    read (no longer in the holds hash: nothing to check). One MULTI, one slot."""
    if not hold_ids:
        return []
    p = keys.partition_of(user, partitions)
    with translate():
        pipe = client.pipeline(transaction=True)
        for hold_id in hold_ids:
            pipe.hexists(keys.holds(p, user), hold_id)
            pipe.zscore(keys.holds_due(p), hold_id)
        replies = pipe.execute()
    return [
        float(score) if score is not None else None if still_open else True
        for still_open, score in zip(replies[::2], replies[1::2], strict=True)
    ]


def _fold_to(events: Sequence[LoggedEvent], version: int) -> Account | None:
    """The account after ``version`` (None where the chain check already reports why)."""
    account: Account | None = None
    try:
        for logged in events:
            if logged.event.version > version:
                break
            account = apply(account, logged.event)
    except IntegrityError:
        return None
    return account


def _check_holds(
    user: str,
    partitions: int,
    account: Account,
    open_holds: Mapping[str, str],
    due: Callable[[Sequence[str]], list[float | bool | None]],
    where: str,
    out: list[Mismatch],
) -> None:
    expected = {
        h.hold_id: f"{h.credits}|{h.expires_at_ms}|{h.at_ms}|{h.reason}"
        for h in account.holds.values()
    }
    for hold_id in sorted(set(expected) | set(open_holds)):
        if expected.get(hold_id) != open_holds.get(hold_id):
            out.append(
                Mismatch(
                    user_id=user,
                    what=OPEN_HOLDS,
                    where=f"{where}.{hold_id}",
                    expected=expected.get(hold_id),
                    found=open_holds.get(hold_id),
                )
            )
    ids = sorted(expected)
    for hold_id, score in zip(ids, due(ids), strict=True):
        want = account.holds[hold_id].expires_at_ms
        if score is True:
            continue  # closed since: its due entry went with it
        if score is None or int(score) != want:
            out.append(
                Mismatch(
                    user_id=user,
                    what=OPEN_HOLDS,
                    where=f"{keys.holds_due(keys.partition_of(user, partitions))}.{hold_id}",
                    expected=want,
                    found=score,
                )
            )


def _check_state(
    user: str,
    partitions: int,
    events: Sequence[LoggedEvent],
    state: Mapping[str, str] | None,
    out: list[Mismatch],
    open_holds: Mapping[str, str] | None = None,
    client: RedisClient | None = None,
) -> None:
    where = keys.account(keys.partition_of(user, partitions), user)
    newest = events[-1].event.version if events else 0
    if state is None:
        if events:
            out.append(
                Mismatch(
                    user_id=user,
                    what=NO_STATE,
                    where=where,
                    expected=f"version {newest}",
                    found=None,
                )
            )
        return
    try:
        version = int(state.get("version", ""))
    except ValueError:
        out.append(
            Mismatch(
                user_id=user,
                what=STATE,
                where=f"{where}.version",
                expected=f"an integer (log: {newest})",
                found=state.get("version"),
            )
        )
        return
    if version > newest:
        out.append(
            Mismatch(
                user_id=user,
                what=MISSING_EVENTS,
                where=where,
                expected=f"events up to version {version}",
                found=f"the log ends at version {newest}",
            )
        )
        return
    # the state was read before the log: the log may have newer events
    event = next((e.event for e in events if e.event.version == version), None)
    if event is None:
        out.append(
            Mismatch(
                user_id=user,
                what=STATE,
                where=f"{where}.version",
                expected="a version the log holds",
                found=version,
            )
        )
        return
    first = events[0].event
    email = (
        first.email
        if isinstance(first, UserRegistered) and first.version == 1
        else state.get("email", "")
    )  # (a history without registration: the chain check)
    made = 0
    if "hseq" in state or any(e.event.hold_amount for e in events):
        account = _fold_to(events, version)
        if account is None:
            return  # the chain check reports it
        made = account.holds_made
        if client is not None:
            holds_key = keys.holds(keys.partition_of(user, partitions), user)
            _check_holds(
                user,
                partitions,
                account,
                open_holds or {},
                lambda ids: _due_scores(client, partitions, user, ids),
                holds_key,
                out,
            )
    found = _state_differences(event, email, state, made)
    if found and version < newest:
        # all but the version as of the newest event: the version was changed
        against_newest = _state_differences(events[-1].event, email, state, made)
        if set(against_newest) == {"version"}:
            found = against_newest
    for key, (want, got) in found.items():
        out.append(
            Mismatch(user_id=user, what=STATE, where=f"{where}.{key}", expected=want, found=got)
        )


def _state_differences(
    event: Event, email: str, state: Mapping[str, str], holds_made: int = 0
) -> dict[str, tuple[str | None, str | None]]:
    a = event.after
    expected = {
        "version": str(event.version),
        "balance": str(a.balance),
        "purchased": str(a.purchased),
        "used": str(a.used),
        "head": event.hash,
        "email": email,
    }
    if holds_made:  # written by the first hold, kept from then on
        expected.update(held=str(a.held), hseq=str(holds_made))
    return {
        key: (expected.get(key), state.get(key))
        for key in sorted(set(expected) | set(state))
        if expected.get(key) != state.get(key)
    }


# -- views --------------------------------------------------------------------------


def _documents(
    db: Database[Document], name: str, user: str | None, page: int
) -> dict[str, dict[str, Any]]:
    query: dict[str, Any] = {} if user is None else {"_id": user}
    return {str(doc["_id"]): dict(doc) for doc in db[name].find(query, batch_size=page)}


def _owed_version(
    events: Sequence[LoggedEvent],
    group: str,
    marks: Mapping[str, Mapping[str, EntryId]],
    heads: Mapping[str, tuple[EntryId | None, EntryId | None]],
) -> int:
    """The newest version a view must already show: of the events its projector
    acknowledged, and of those gone from their stream before the views were read
    (a projector can never be given those any more)."""
    owed = 0
    for logged in events:
        position = logged.position
        if position is None:
            continue
        stream, entry = position
        eid = parse_id(entry)
        mark = marks.get(stream, {}).get(group)
        first, generated = heads.get(stream, (None, None))
        acked = mark is not None and eid < mark
        gone = generated is not None and eid <= generated and (first is None or eid < first)
        if acked or gone:
            owed = max(owed, logged.event.version)
    return owed


def _check_view(
    view: str,
    fields: ViewFields,
    user: str,
    events: Sequence[LoggedEvent],
    doc: Mapping[str, Any] | None,
    owed: int,
    report: AuditReport,
) -> None:
    out = report.mismatches
    where = f"{view}/{user}"
    if not events:
        if doc is not None:
            out.append(
                Mismatch(
                    user_id=user,
                    what=VIEW_WITHOUT_EVENTS,
                    where=where,
                    expected=None,
                    found=f"version {doc.get('version')}",
                )
            )
        return
    newest = events[-1].event.version
    if doc is None:
        note = Mismatch(
            user_id=user,
            what=view if owed else LAGGING,
            where=where,
            expected=f"version {owed or newest}",
            found=None,
        )
        (out if owed else report.lagging).append(note)
        return
    raw_version = doc.get("version")
    version = (
        raw_version if isinstance(raw_version, int) and not isinstance(raw_version, bool) else -1
    )
    logged = next((e for e in events if e.event.version == version), None)
    if logged is None:
        out.append(
            Mismatch(
                user_id=user,
                what=view,
                where=f"{where}.version",
                expected=f"a version the log holds (newest {newest})",
                found=raw_version,
            )
        )
        return
    expected = {"_id": user, **fields(logged.event)}
    differs = False
    for key in sorted(set(expected) | set(doc), key=_field_order(expected)):
        want, got = expected.get(key, _ABSENT), doc.get(key, _ABSENT)
        if not _same(want, got):
            differs = True
            out.append(
                Mismatch(
                    user_id=user,
                    what=view,
                    where=f"{where}.{key}",
                    expected=_opt(want),
                    found=_opt(got),
                )
            )
    if differs or version == newest:
        return
    if version < owed:
        out.append(
            Mismatch(
                user_id=user,
                what=view,
                where=f"{where}.version",
                expected=f"at least {owed} (acknowledged by its projector, or "
                "gone from the stream before it could read it)",
                found=version,
            )
        )
    else:
        report.lagging.append(
            Mismatch(
                user_id=user, what=LAGGING, where=where, expected=f"version {newest}", found=version
            )
        )


# -- helpers ------------------------------------------------------------------------


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def _opt(value: Any) -> Any:
    return None if value is _ABSENT else value


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same kind: True is not 1 and 1.0 is not 1 (but an ``Int64``
    from the driver is an int)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return type(a) is type(b) and a == b


def _field_order(expected: Mapping[str, Any]) -> Callable[[str], tuple[int, str]]:
    order = {k: i for i, k in enumerate(expected)}
    return lambda k: (order.get(k, len(order)), k)


def _where(logged: LoggedEvent) -> str:
    if logged.stream is not None:
        return logged.stream.where
    assert logged.archived is not None
    return logged.archived.where


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _show(value: Any) -> str:
    return "nothing" if value is None else repr(_plain(value))


__all__ = ["AuditReport", "Mismatch", "audit"]
