"""The ``ledger`` command: ``main(argv) -> int`` and its exit codes.

``main`` parses and dispatches (``api.cli.main``); ``serve`` and the audit
family (``replay``, ``audit``) have modules of their own; every exit code is
in ``api.cli.exits``. ``ledger demo`` is the
one command that reaches ``api.dev``, and only when it runs.
"""

from .exits import RET_CONNECT, RET_ERROR, RET_IMPORT, RET_OK, RET_USAGE, Exit
from .main import build_parser, main

__all__ = [
    "RET_CONNECT",
    "RET_ERROR",
    "RET_IMPORT",
    "RET_OK",
    "RET_USAGE",
    "Exit",
    "build_parser",
    "main",
]
