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
# A relative DATA_MIRROR (as in the README) is made absolute here, once, against the directory `make` runs in,
# so DVC stages, Prefect flows and tests that run elsewhere (a copied repository, a worker) see the same folder.
ifneq ($(strip $(DATA_MIRROR)),)
export DATA_MIRROR := $(abspath $(DATA_MIRROR))
endif

.PHONY: help venv run test test-fast repro deploy serve services services-stop remote push pull verify-cache melu-table melu-bench seqrec-bench dissan-table dissan-bench egtr-bench clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.installed ## create .venv and install the pinned dependencies

run: venv ## run the whole pipeline (every dvc.yaml: download -> preprocess -> Prefect flows -> MLflow registry), then check the registry
	dvc repro --all-pipelines
	$(PY) -m flows.registry_check --repair

repro: run

test: venv ## run the test suite (set DATA_MIRROR for the tests on real data)
	$(PY) -m pytest -q

test-fast: venv ## unit tests only (no end-to-end flows or servers)
	$(PY) -m pytest -q -m "not slow"

deploy: venv ## register every deployment of prefect.yaml (needs PREFECT_API_URL and a work pool named gpu)
	prefect --no-prompt deploy --all

MODEL ?= models:/melu@champion
PORT ?= 5001
serve: venv ## serve a registered model over HTTP on 127.0.0.1: make serve MODEL=models:/melu@champion PORT=5001
	mlflow models serve -m "$(MODEL)" --env-manager local -h 127.0.0.1 -p $(PORT)

melu-table: venv ## MeLU vs baselines over 3 episode seeds (docs/results.md table)
	$(PY) scripts/melu_table.py --out docs/melu_table.json

OFFICIAL ?=
melu-bench: venv ## MeLU epoch time and memory, batched vs the official computation (OFFICIAL=<hoyeoplee/MeLU checkout>: also the official code)
	$(PY) scripts/melu_benchmark.py --local-steps 1 5 --threads 1 2 $(if $(OFFICIAL),--official-repo $(OFFICIAL)) --out docs/melu_benchmark.json

.venv-recbole/.installed:  ## RecBole's own environment (its pins conflict with the project's: numpy < 2, pandas < 3)
	test -x .venv-recbole/bin/python || python3 -m venv .venv-recbole
	.venv-recbole/bin/pip install --quiet "recbole==1.2.1" "torch==2.14.1" "numpy==1.26.4" "pandas==2.3.3" "scipy==1.17.1" \
		"ray==2.6.3" "colorlog==4.7.2" "colorama==0.4.4" "tensorboard==2.21.0" "thop==0.1.1.post2209072238" "texttable==1.7.2" "plotly==7.1.0"
	touch $@

seqrec-bench: venv .venv-recbole/.installed ## GRU4Rec/SASRec throughput and quality vs RecBole (needs .venv-recbole, see docs/results.md)
	$(PY) scripts/seqrec_benchmark.py --datasets Beauty --systems recbole-gru4rec recbole-sasrec --budget-s 240 --out docs/seqrec_benchmark_recbole_beauty.json
	$(PY) scripts/seqrec_benchmark.py --systems ours-gru4rec ours-sasrec --max-epochs 1 --budget-s 0 --out docs/seqrec_benchmark_ours_epoch.json

dissan-table: venv ## DisSAN, no-distance ablation and BiLSTM-max on SICK over 3 seeds
	$(PY) scripts/dissan_table.py --seeds 0 1 2 --out docs/dissan_table

dissan-bench: venv ## DisSAN batched encoder vs a per-example, per-head reference (speed, memory, equality)
	$(PY) scripts/dissan_benchmark.py --out docs/dissan_benchmark.json

egtr-bench: venv ## EGTR params and images/s at 600x1000, batch 1: detector alone vs the full model
	$(PY) scripts/egtr_benchmark.py --out docs/egtr_benchmark.json

clean: ## remove local runs, checkpoints and outputs (not the DVC cache)
	rm -rf mlflow.db mlruns checkpoints outputs

services: venv ## start the server stack in .services/: PostgreSQL, S3 (moto_server unless MLFLOW_S3_ENDPOINT_URL), MLflow and Prefect servers, a worker on pool gpu
	$(PY) -m services.stack start

services-stop: ## stop the server stack (no process is left behind)
	$(PY) -m services.stack stop

remote: venv ## make the S3 remote `storage` DVC's default (.dvc/config.local; DVC_REMOTE_URL, AWS_ENDPOINT_URL_S3)
	$(PY) -m services.dvc_remote configure

push: venv ## dvc push: every cached stage output to the remote
	$(PY) -m services.dvc_remote push

pull: venv ## dvc pull: a fresh clone gets the results (then `dvc repro` runs no stage)
	dvc pull

verify-cache: venv ## re-hash the local DVC cache; corrupted objects (and files checked out from them) are fetched again
	$(PY) -m services.dvc_remote verify --repair
