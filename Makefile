# `make run` runs the whole pipeline on embedded defaults; `make test` runs the tests.
# Both create and fill the virtual environment .venv when it is missing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export MLFLOW_TRACKING_URI ?= sqlite:///$(abspath mlflow.db)
export MLFLOW_DISABLE_TELEMETRY ?= true
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90
export DVC_NO_ANALYTICS ?= 1
export DO_NOT_TRACK ?= 1
export HF_HUB_OFFLINE ?= 1

.PHONY: help venv run test test-fast repro deploy melu-table melu-bench clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.installed ## create .venv and install the pinned dependencies

run: venv ## run the whole pipeline (dvc repro: download -> preprocess -> Prefect flows -> MLflow registry)
	dvc repro

repro: run

test: venv ## run the test suite (set DATA_MIRROR for the tests on real data)
	$(PY) -m pytest -q

test-fast: venv ## unit tests only (no end-to-end flows or servers)
	$(PY) -m pytest -q -m "not slow"

deploy: venv ## register every deployment of prefect.yaml (needs PREFECT_API_URL and a work pool named gpu)
	prefect --no-prompt deploy --all

melu-table: venv ## MeLU vs baselines over 3 episode seeds (docs/results.md table)
	$(PY) scripts/melu_table.py --out docs/melu_table.json

melu-bench: venv ## MeLU epoch time and peak memory, batched vs per-user loop
	$(PY) scripts/melu_benchmark.py --out docs/melu_benchmark.json

clean: ## remove local runs, checkpoints and outputs (not the DVC cache)
	rm -rf mlflow.db mlruns checkpoints outputs
