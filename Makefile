# argbench — `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp
# CPU build of torch where there is no NVIDIA GPU: a plain `torch` would pull gigabytes of CUDA packages.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
NAME ?= with_layernorm_relu
GROUP ?=
ARGS ?=
SEEDS ?= 1
TRIALS ?= 8
JOBS ?= 1
BASE ?=
STORAGE ?=
PROFILE ?=
ALLOWED_HOSTS ?=
DB ?= sqlite:///$(CURDIR)/mlruns/server.db
SPACE ?= default
HOST ?= 127.0.0.1
PORT ?= 5000
# the address a browser uses for the UI (HOST=0.0.0.0 listens everywhere; a browser needs a name)
UI_HOST = $(if $(filter 0.0.0.0,$(HOST)),$(shell hostname),$(HOST))
DASH_PORT ?= 8080
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.DEFAULT_GOAL := help
.PHONY: help install lint test test-fast stats baselines baseline-mnrl ablation ablations ablation-list report ui search dashboard bench clean study server

help: ## list every target with one line each
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}' \
	  | sed -e 's|$$(HOST)|$(HOST)|g' -e 's|$$(PORT)|$(PORT)|g' -e 's|$$(DASH_PORT)|$(DASH_PORT)|g'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP) ## create .venv and install argbench with its dev extra (CPU torch without an NVIDIA GPU)

lint: $(STAMP) ## ruff (configured in pyproject.toml) over argbench/ and tests/
	$(BIN)/ruff check argbench tests

test: $(STAMP) ## run the whole test suite (real-corpus tests too when ARGBENCH_DATA is set); what CI runs
	$(BIN)/pytest -q

test-fast: $(STAMP) ## the quick edit-test loop: skip tests marked slow
	$(BIN)/pytest -q -m "not slow"

stats: $(STAMP) ## corpus statistics, mean pool sizes per task, copies and leakage (ARGS="--data PATH --json")
	$(BIN)/argbench data stats $(ARGS)

baselines: $(STAMP) ## zero-shot TF-IDF and all-MiniLM-L6-v2 on the test split (three views), tracked in MLflow
	$(BIN)/argbench eval --encoder tfidf --split test --track $(ARGS)
	$(BIN)/argbench eval --encoder all-MiniLM-L6-v2 --pooling mean --max-length 256 --split test --track $(ARGS)

baseline-mnrl: $(STAMP) ## sentence-transformers MNRL fine-tuning of all-MiniLM-L6-v2, tracked as st_mnrl (ARGS="--epochs 3 --max-length 128")
	$(BIN)/argbench baseline mnrl --track $(ARGS)

ablation: $(STAMP) ## run one named ablation, tracked in MLflow: make ablation NAME=with_layernorm_relu [BASE=…] [SEEDS=3] [PROFILE=cpu] [ARGS="--set k=v"]
	$(BIN)/argbench ablation run $(NAME) $(if $(BASE),--base $(BASE)) $(if $(filter-out 1,$(SEEDS)),--seeds $(SEEDS)) $(if $(PROFILE),--profile $(PROFILE)) $(ARGS)

ablations: $(STAMP) ## run every ablation of a group (or all): make ablations GROUP=norm [ARGS=...]
	@set -e; for name in $$($(BIN)/argbench ablation list --names $(if $(GROUP),--group $(GROUP))); do \
	  echo "== $$name"; $(BIN)/argbench ablation run $$name $(if $(BASE),--base $(BASE)) $(if $(filter-out 1,$(SEEDS)),--seeds $(SEEDS)) $(if $(PROFILE),--profile $(PROFILE)) $(ARGS); done

ablation-list: $(STAMP) ## list the registry: name, group, question
	$(BIN)/argbench ablation list

report: $(STAMP) ## write mlruns/report.html comparing runs from MLflow (ARGS="--runs a b --metric val/epa/acc_at_1")
	$(BIN)/argbench report $(ARGS)

ui: $(STAMP) ## MLflow UI on the local store at http://$(HOST):$(PORT); prints the link that opens on the training runs (HOST=0.0.0.0 to expose it)
	@echo "MLflow UI, training runs of experiment argbench: $$(MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/mlruns/mlflow.db ARGBENCH_UI_URL=http://$(UI_HOST):$(PORT) $(BIN)/argbench link)"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host $(HOST) --port $(PORT)

search: $(STAMP) ## Optuna search for an ablation: make search NAME=baseline [SPACE=default] TRIALS=8 [PROFILE=cpu] [ARGS="--jobs 2"]
	$(BIN)/argbench search --ablation $(NAME) --space $(SPACE) --trials $(TRIALS) $(if $(PROFILE),--profile $(PROFILE)) $(ARGS)

dashboard: $(STAMP) ## optuna-dashboard on the default study storage, http://$(HOST):$(DASH_PORT)
	$(BIN)/optuna-dashboard sqlite:///$(CURDIR)/mlruns/optuna.db --host $(HOST) --port $(DASH_PORT)

bench: $(STAMP) ## side-by-side benchmarks against the original's methods (ARGS="load --json")
	$(BIN)/argbench bench $(or $(ARGS),all)

.PHONY: gpu-check
gpu-check: $(STAMP) ## first command on a GPU machine (~5 min): recipe bf16 vs fp32, seq/s vs sentence-transformers, memory (ARGS="--dry-run")
	$(BIN)/argbench bench gpu $(ARGS)

clean: ## remove the venv and caches (keeps mlruns/)
	rm -rf $(VENV) .pytest_cache *.egg-info

study: $(STAMP) ## group × seeds as one resumable study: make study GROUP=norm BASE=learning_recipe_in_batch SEEDS=3 [JOBS=2] [STORAGE=…] [PROFILE=cpu]
	$(BIN)/argbench study $(if $(GROUP),--group $(GROUP)) $(if $(BASE),--base $(BASE)) --seeds $(SEEDS) \
	  --jobs $(JOBS) $(if $(STORAGE),--storage $(STORAGE)) $(if $(PROFILE),--profile $(PROFILE)) $(ARGS)

server: $(STAMP) ## MLflow tracking server for many workers: http://$(HOST):$(PORT) over DB (default sqlite mlruns/server.db; DB=postgresql://…)
	$(BIN)/mlflow server --backend-store-uri $(DB) --artifacts-destination $(CURDIR)/mlruns/server-artifacts \
	  --host $(HOST) --port $(PORT) $(if $(ALLOWED_HOSTS),--allowed-hosts $(ALLOWED_HOSTS))
