"""``python -m api`` runs the ``ledger`` console script."""

import sys

from .cli import main
from .procs import watch_parent

watch_parent()  # spawned by api.procs.popen_child: end when the parent has gone
sys.exit(main())
