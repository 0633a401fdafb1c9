"""The ``ledger`` command's exit codes, in one place for every subcommand.

    0 OK         done; the audit found everything in agreement
    1 FAILED     the audit found a difference, an export does not verify, a dead
                 letter could not be requeued, the demo's proof failed
    2 USAGE      bad options, environment or settings (argparse exits 2 too)
    3 IMPORT     ``worker --import`` could not import a module
    4 CONNECT    Redis or MongoDB is unreachable
    5 NOT_FOUND  the account named does not exist

``ledger demo`` stopped by a signal exits 128 + the signal, as a shell would report it.
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    IMPORT = 3
    CONNECT = 4
    NOT_FOUND = 5


RET_OK = Exit.OK
RET_ERROR = Exit.FAILED
RET_MISMATCH = Exit.FAILED
RET_USAGE = Exit.USAGE
RET_IMPORT = Exit.IMPORT
RET_CONNECT = Exit.CONNECT
RET_NOT_FOUND = Exit.NOT_FOUND

__all__ = [
    "RET_CONNECT",
    "RET_ERROR",
    "RET_IMPORT",
    "RET_MISMATCH",
    "RET_NOT_FOUND",
    "RET_OK",
    "RET_USAGE",
    "Exit",
]
