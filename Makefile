# The two commands of the README: `make demo` and `make test`. Both bootstrap .venv themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench lint model mosquitto clean

# (Re)install only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# Tests, the demo and the benchmarks start their own broker from ./mosquitto.conf.
mosquitto:
	@if ! PATH="$$PATH:/usr/sbin:/sbin" command -v mosquitto >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "mosquitto is missing: installing it (apt-get install mosquitto)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients; \
	  else \
	    echo "mosquitto is missing: install it with 'sudo apt-get install mosquitto'" >&2; exit 1; \
	  fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) mosquitto lint
	@$(BIN)/pytest; rc=$$?; \
	if [ $$rc = 5 ]; then echo "pytest collected no tests: that is a failure" >&2; fi; exit $$rc

demo: $(STAMP) mosquitto
	$(BIN)/edge-gateway demo

# The side-by-side harness (raw ceiling, naive script, gateway), then spool, drain and wirebytes;
# a table, bench/results/latest.json and latency.png (the plot needs the `bench` extra); then a
# model swap under load and the cost of an idle poll (bench/results/modelswap.json); the
# gateway's memory while a 1,000,000-reading backlog sits in the spool (backlog.json).
bench: $(STAMP) mosquitto
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || \
	  $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	$(BIN)/python bench/compare.py
	$(BIN)/python bench/modelswap.py --duration 15
	$(BIN)/python bench/backlog.py

# Rebuild the bundled default model from its recipe (byte-for-byte reproducible).
model: $(STAMP)
	$(BIN)/python models/train_default.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
