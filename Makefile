# Every target creates the virtualenv and installs what it needs by itself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ledger demo

# Everything, as CI runs it: the storm, outages, crashes, demo runs and the browser test too.
test: $(STAMP)
	scripts/system-deps
	$(BIN)/python -m pytest -q

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
