"""Development only: embedded servers, the demo, its load generator, a deployment's processes.

Nothing a production ``ledger serve|worker|project|scheduler`` runs imports this
package; ``ledger demo`` imports it when it starts. ``embedded`` runs the
``embedded`` extra's SecantusDB binary (GPL-2.0), which is never a runtime
dependency. Tests and benchmarks use it too.
"""
