"""``ledger replay``, ``ledger audit`` and ``ledger audit export``.

``api.cli`` wires them in with ``add_parsers(sub, _common)`` in its parser and
``run(args, settings)`` for ``args.command in COMMANDS``.

Exit codes (``api.cli.exits``): 0 clean / done; 1 the audit found a
difference, or the account to export does not verify; 2 bad options or
settings; 4 Redis or MongoDB unreachable; 5 no such account.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from ..settings import Settings
from .exits import RET_CONNECT, RET_MISMATCH, RET_NOT_FOUND, RET_OK, RET_USAGE
from .progress import progress_bars

COMMANDS = frozenset({"replay", "audit"})

ONLY_CHOICES = ("balances", "credit_scores", "events")
FORMATS = ("csv", "jsonl")


def add_parsers(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``replay`` and ``audit`` (with ``audit export``) to ``ledger``'s subcommands."""
    replay = sub.add_parser(
        "replay",
        help="rebuild read models from the log (archive + streams)",
        description="Rebuild balances, credit_scores and the events archive from the log "
        "into fresh collections and swap them in (renameCollection with dropTarget), then "
        "apply the events that arrived meanwhile. Live projectors may keep running. The "
        "archive is never dropped: only the events it lacks are inserted.",
    )
    common(replay)
    replay.add_argument(
        "--only",
        default=None,
        metavar="NAMES",
        help="comma-separated read models: balances,credit_scores,events (default: all)",
    )
    replay.add_argument(
        "--into",
        default=None,
        metavar="DBNAME",
        help="build the read models in this database instead of swapping them into the live one",
    )
    replay.add_argument(
        "--batch", type=int, default=1000, help="accounts (or archive documents) per bulk write"
    )
    replay.add_argument(
        "--progress",
        action="store_true",
        help="show progress on stderr even when it is not a terminal",
    )

    audit = sub.add_parser(
        "audit",
        help="check the log, Redis and the read models against each other",
        description="Re-fold every account from the log, verify its SHA-1 hash chain, and "
        "compare it with the Redis account state, the balances and credit_scores documents "
        "and each event's archive and stream copies. Exit 0 when everything agrees, 1 when "
        "anything differs, 5 when --user names no account.",
    )
    common(audit)
    audit.add_argument("--user", default=None, metavar="ID", help="audit one account")
    audit.add_argument("--json", action="store_true", help="print a JSON document")
    audit.add_argument(
        "--progress",
        action="store_true",
        help="show progress on stderr even when it is not a terminal",
    )
    asub = audit.add_subparsers(dest="audit_command", metavar="{export}")
    export = asub.add_parser(
        "export",
        help="an account statement (CSV or JSON lines)",
        description="One row per event in version order: time (UTC), kind, signed amount, "
        "balance after it, purchased/used totals, reason/currency/transaction id, event id "
        "and hash. The account's history is verified first.",
    )
    before = len(export._actions)
    common(export)
    # Options given before `export` (ledger audit --mongo-url … export) must not be
    # overwritten by this parser's defaults: leave them out unless given here.
    for action in export._actions[before:]:
        action.default = argparse.SUPPRESS
    export.add_argument("--user", required=True, metavar="ID", help="the account")
    export.add_argument("--format", choices=FORMATS, default="csv", help="default: csv")
    export.add_argument(
        "--out", default=None, metavar="FILE", help="write to FILE instead of stdout"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``replay``, ``audit`` or ``audit export``; returns the exit code."""
    from pymongo.errors import ConnectionFailure

    from projections.store import StoreUnavailable
    from projections.store import connect as mongo_connect
    from streams.connection import connect
    from streams.errors import ConfigError, Unavailable

    export = args.command == "audit" and getattr(args, "audit_command", None) == "export"
    prog = "ledger audit export" if export else f"ledger {args.command}"
    if not settings.mongo_url:
        return _fail(prog, "MONGO_URL is not set", RET_USAGE)
    try:
        redis_url = settings.streams().redis_url
    except ConfigError as exc:
        return _fail(prog, str(exc), RET_USAGE)
    client = connect(redis_url)
    mongo = mongo_connect(settings.mongo_url)
    try:
        _check_partitions(client, settings.partitions)
        db = mongo[settings.mongo_db]
        if args.command == "replay":
            return _replay(prog, args, client, settings.partitions, db)
        if export:
            return _export(prog, args, client, settings.partitions, db)
        return _audit(prog, args, client, settings.partitions, db)
    except ConfigError as exc:
        return _fail(prog, str(exc), RET_USAGE)
    except (Unavailable, StoreUnavailable) as exc:
        return _fail(prog, str(exc), RET_CONNECT)
    except ConnectionFailure as exc:
        return _fail(prog, f"MongoDB is unavailable ({type(exc).__name__})", RET_CONNECT)
    finally:
        client.close()
        mongo.close()


def _fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return code


def _check_partitions(client: Any, partitions: int) -> None:
    """Refuse a partition count or key layout other than this Redis recorded (read-only)."""
    from streams.connection import check_partitions

    check_partitions(client, partitions)


def _replay(prog: str, args: argparse.Namespace, client: Any, partitions: int, db: Any) -> int:
    from pymongo.errors import InvalidName

    from projections.replay import replay

    only = list(ONLY_CHOICES)
    if args.only is not None:
        only = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(only) - set(ONLY_CHOICES))
        if unknown or not only:
            return _fail(
                prog,
                f"unknown read model(s): {', '.join(unknown) or '(none given)'} "
                f"(choose from {', '.join(ONLY_CHOICES)})",
                RET_USAGE,
            )
    if args.batch < 1:
        return _fail(prog, "--batch must be at least 1", RET_USAGE)
    try:
        into = db.client[args.into] if args.into is not None else None
    except InvalidName as exc:
        return _fail(prog, f"--into: {exc}", RET_USAGE)
    if into is not None and into.name in ("admin", "local", "config"):
        return _fail(prog, f"--into: {into.name!r} is a system database", RET_USAGE)
    with progress_bars(bool(args.progress)) as progress:
        result = replay(
            client, partitions, db, only=only, into=into, batch=args.batch, progress=progress
        )
    where = "swapped into" if into is None or into.name == db.name else "built in"
    for name in result.swapped:
        print(f"{name}: rebuilt and {where} database {result.database!r}")
    if "events" in only:
        print(
            f"events: {result.archived} archive documents inserted "
            f"into database {result.database!r}"
        )
    if result.caught_up:
        print(f"caught up {result.caught_up} accounts that changed during the replay")
    if result.gaps:
        shown = ", ".join(repr(u) for u in result.gaps[:10])
        more = f" and {len(result.gaps) - 10} more" if len(result.gaps) > 10 else ""
        print(
            f"{prog}: warning: {len(result.gaps)} accounts have version gaps "
            f"({shown}{more}); run `ledger audit`",
            file=sys.stderr,
        )
    print(result.summary())
    return RET_OK


def _audit(prog: str, args: argparse.Namespace, client: Any, partitions: int, db: Any) -> int:
    from projections.audit import audit

    with progress_bars(bool(args.progress)) as progress:
        report = audit(client, partitions, db, user=args.user, progress=progress)
    if args.user is not None and report.accounts == 0:
        return _fail(prog, f"no account for user {args.user!r}", RET_NOT_FOUND)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        print(report.summary())
        for m in report.mismatches:
            print(f"MISMATCH {m}")
        for note in report.lagging:
            print(f"lagging  {note}")
    return RET_OK if report.ok else RET_MISMATCH


def _export(prog: str, args: argparse.Namespace, client: Any, partitions: int, db: Any) -> int:
    from ledger.errors import IntegrityError, UnknownAccount
    from projections.statement import statement, write

    try:
        rows = statement(client, partitions, db, args.user)
    except UnknownAccount:
        return _fail(prog, f"no account for user {args.user!r}", RET_NOT_FOUND)
    except IntegrityError as exc:
        return _fail(
            prog,
            f"the history of {args.user!r} does not verify ({exc.message}); "
            f"run `ledger audit --user {args.user}`",
            RET_MISMATCH,
        )
    if args.out is None:
        write(rows, args.format, sys.stdout)
        sys.stdout.flush()
        return RET_OK
    try:
        with open(args.out, "w", encoding="utf-8", newline="") as out:
            write(rows, args.format, out)
    except OSError as exc:
        return _fail(prog, f"cannot write {args.out!r}: {exc.strerror or exc}", RET_USAGE)
    print(f"wrote {len(rows)} rows to {args.out}", file=sys.stderr)
    return RET_OK


__all__ = [
    "COMMANDS",
    "RET_CONNECT",
    "RET_MISMATCH",
    "RET_NOT_FOUND",
    "RET_OK",
    "RET_USAGE",
    "add_parsers",
    "run",
]
