"""``python -m api`` runs the ``ledger`` console script."""

import sys

from .cli import main

sys.exit(main())
