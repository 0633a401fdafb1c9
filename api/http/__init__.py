"""The HTTP API: a Starlette app (``app.create_app``), its routes, auth, errors and metrics.

Imported by ``ledger serve``; never imports the command line (``api.cli``) nor
the development tools (``api.dev``).
"""
