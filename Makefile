# Two commands on a fresh machine: `make demo` and `make test`. Everything they need is
# installed here, into .venv; nothing is expected to have been installed by hand.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: install demo dev test lint format bench services clean cluster cluster-stop

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# A local Dagster instance (SQLite, telemetry off) shared by `make demo` and `make dev`,
# so the demo's runs show up in the UI.
$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	printf 'telemetry:\n  enabled: false\n' > $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/etl-assets demo

# `dagster dev` (UI on http://127.0.0.1:3000) and the tenant API on http://127.0.0.1:8090,
# both on the same defaults (./data, its SQLite warehouse, or ETL_DATA_DIR/ETL_WAREHOUSE_URL
# when set). Ctrl-C stops both: the API is stopped when this recipe's shell exits, however.
dev: install $(DAGSTER_HOME)/dagster.yaml
	@$(BIN)/etl-assets api --host 127.0.0.1 --port 8090 & api=$$!; \
	trap 'kill $$api 2>/dev/null; wait $$api 2>/dev/null' EXIT; \
	trap 'exit 130' INT TERM; \
	$(BIN)/dagster dev -m etl_assets.definitions

# Start the local PostgreSQL and Redis when they are down; fail if they do not come up.
# nginx is only installed (never started here): the proxy tests run their own instance.
services:
	@command -v nginx >/dev/null || (apt-get update -qq && apt-get install -y -qq nginx)
	@if ! pg_isready -q -h 127.0.0.1 -p 5432; then \
	  echo "starting PostgreSQL"; \
	  pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start; \
	fi
	@if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then \
	  echo "starting Redis"; \
	  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no; \
	fi
	@for i in $$(seq 100); do \
	  pg_isready -q -h 127.0.0.1 -p 5432 && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 \
	    && exit 0; sleep 0.2; \
	done; echo "PostgreSQL or Redis did not start" >&2; exit 1

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install services lint
	$(BIN)/python -m pytest

bench: install services
	$(BIN)/python bench/cluster_bench.py
	$(BIN)/python bench/aggregates_bench.py
	$(BIN)/python bench/export_bench.py
	$(BIN)/python bench/import_bench.py
	$(BIN)/python bench/api_bench.py

# The production topology on this machine, without Docker (see README, "Production").
cluster: install services
	bash deploy/cluster.sh start

cluster-stop:
	bash deploy/cluster.sh stop

clean:
	rm -rf $(VENV) .dagster_home data .bench .cluster .cluster-tests .pytest_cache .ruff_cache
