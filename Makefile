# Every target creates the virtualenv and installs what it needs by itself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast test-cluster-core lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ledger demo

# Everything, as CI runs it: the storm, outages, crashes, demo runs and the browser test too;
# then the core modules once more on a Redis Cluster (test-cluster-core).
test: $(STAMP)
	scripts/system-deps
	$(BIN)/python -m pytest -q
	$(CLUSTER_CORE_RUN)

# The core stream, projection and API tests again, on a real 3-master Redis Cluster
# (--redis-backend=cluster; tests/cluster hold the cluster-only ones). Chosen to fit about
# 70 s on 2 cores. Tests marked single_redis (with their reason) are left out there; the
# Mongo-outage test is left out (it waits out a MongoDB outage: Redis plays no part).
CLUSTER_CORE := \
	tests/streams/test_append.py tests/streams/test_enqueue.py \
	tests/streams/test_enqueue_many.py tests/streams/test_worker.py \
	tests/streams/test_scheduler.py tests/streams/test_order.py tests/streams/test_twin.py \
	tests/streams/test_dependencies.py tests/api/test_dependency_routes.py \
	tests/streams/test_finished.py \
	tests/streams/test_lua_keys.py tests/streams/test_keys.py \
	tests/projections/test_runner.py tests/projections/test_replay.py \
	tests/projections/test_audit.py tests/projections/test_eventlog.py \
	tests/projections/test_retention.py tests/projections/test_db_tasks.py \
	tests/api/test_ledger_routes.py tests/api/test_queue_routes.py
CLUSTER_CORE_RUN = $(BIN)/python -m pytest -q --redis-backend=cluster $(CLUSTER_CORE) \
	--deselect tests/projections/test_runner.py::test_projector_waits_out_a_database_outage

test-cluster-core: $(STAMP)
	scripts/system-deps
	$(CLUSTER_CORE_RUN)

# The developer's lane (under a minute): leaves out tests marked slow, faults or browser.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not faults and not browser"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .hypothesis
