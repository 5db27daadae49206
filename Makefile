# ssc-assets: every target creates/refreshes the virtualenv it needs.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
DEPS_HASH := $(shell sed -n '/^dependencies/,/^\[project.scripts\]/p' pyproject.toml | sha1sum | cut -c1-12)
STAMP := $(VENV)/.deps-$(DEPS_HASH)
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
PYTEST_ARGS ?=
# ruff is a dev tool, not a project dependency (the dependency spec keys the cached venv).
RUFF_VERSION := 0.17.6

.PHONY: venv ruff lint demo test dev bench clean

venv: $(STAMP)
	@$(BIN)/pip install -q --no-deps --no-build-isolation -e . >/dev/null

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -e '.[test]'
	@rm -f $(VENV)/.deps-* && touch $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	@mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

## make demo: synthetic plates -> every asset materialized through Dagster -> summary
demo: venv $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/ssc-assets demo

## make lint: ruff (pyflakes, pycodestyle, isort, bugbear, complexity; config in pyproject.toml)
lint: venv ruff
	$(BIN)/ruff check .

# Installs the pinned ruff into the venv when it is missing or a different version.
ruff: venv
	@[ "$$($(BIN)/ruff --version 2>/dev/null)" = "ruff $(RUFF_VERSION)" ] \
	  || $(BIN)/pip install -q "ruff==$(RUFF_VERSION)"

## make test: ruff, then the test suite (what CI runs)
test: venv ruff
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## make dev: the Dagster UI (and daemon) on the demo instance, http://127.0.0.1:3000, and MLflow, http://127.0.0.1:5000
dev: venv $(DAGSTER_HOME)/dagster.yaml
	@$(BIN)/ssc-assets mlflow-ui --port 5000 & mlflow_pid=$$!; \
	trap 'kill $$mlflow_pid 2>/dev/null' EXIT INT TERM; \
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## make bench: speed benchmarks (tables of ratios against naive references), then one small
## plate from raw TIFFs to well embeddings (seconds per site per stage, peak RSS, TIFF reads)
BENCH_PLATE_ARGS ?= --wells 2 --sites 4 --size 2048
bench: venv
	$(BIN)/python benchmarks/ingest_qc.py
	$(BIN)/python benchmarks/image_steps.py
	$(BIN)/python benchmarks/plate_run.py $(BENCH_PLATE_ARGS)

clean:
	rm -rf data .dagster_home
