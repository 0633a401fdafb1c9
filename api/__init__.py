"""The edge: everything that faces an operator or a client.

* ``api.http``: the HTTP API (Starlette app, routes, auth, errors, metrics, dashboard).
* ``api.cli``: the ``ledger`` command (``python -m api``); ``serve`` runs ``api.http``.
* ``api.dev``: development only (embedded servers, ``ledger demo``, load generator,
  ``Deployment``); no production command imports it.
* shared by them: ``settings`` (options and environment), ``jsonlog`` (JSON log
  lines, request ids) and ``procs`` (children that die with their parent).
"""
