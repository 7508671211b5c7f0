# sparsevit artifact kit. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PLOT_VENV ?= .venv-plot
# The CPU torch build these machines serve locally; a GPU box keeps its own torch
# (scripts/env_install.sh, or the container).
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton==3.6.0
# numpy 2.4 turned size-1 array -> int into an error, which Triton's CPU interpreter
# (used by the tests) still relies on.
NUMPY_SPEC ?= numpy>=1.24,<2.4
FIGURES := $(notdir $(patsubst %/,%,$(dir $(wildcard ae/*/plot.sh))))

.PHONY: help setup test lint quick-plot full-run check env-check clean docker-build \
	docker-quick-plot docker-full-run
help:
	@echo "make quick-plot   every figure from backup_logs/ (no GPU, ~1 min)"
	@echo "make test         the test suite (what CI runs)"
	@echo "make setup        create $(VENV) with the kit, torch, triton and test tools"
	@echo "make fig-NAME     run one figure's experiments (ae/NAME/run.sh)"
	@echo "make plot-NAME    plot one figure from its backup logs"
	@echo "make full-run     every figure on the GPU into results/<date>, then plots and check"
	@echo "                  (EXECUTOR=local|multi-gpu|slurm RESULTS=dir RUN_ARGS=...)"
	@echo "make check        fresh results against backup_logs/, a verdict per claim"
	@echo "make env-check    GPU, driver, CUDA, torch, triton, flash-attn, Gurobi/HiGHS"
	@echo "make docker-build / docker-quick-plot / docker-full-run   the container (docker/)"
	@echo "figures: $(FIGURES)"

$(VENV)/.stamp: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q "$(TORCH_SPEC)" "$(TRITON_SPEC)" "$(NUMPY_SPEC)" highspy
	$(VENV)/bin/pip install -q -e ".[dev]" "$(NUMPY_SPEC)"
	touch $@

setup: $(VENV)/.stamp

lint: setup
	$(VENV)/bin/ruff check src tests plot scripts

test: setup lint
	TRITON_INTERPRET=1 $(VENV)/bin/python -m pytest -q

# The quick path needs only numpy, matplotlib and tabulate: no torch, no GPU.
$(PLOT_VENV)/.stamp:
	$(PYTHON) -m venv $(PLOT_VENV)
	$(PLOT_VENV)/bin/pip install -q numpy matplotlib tabulate
	touch $@

quick-plot: $(PLOT_VENV)/.stamp
	@set -e; for f in $(FIGURES); do \
	  echo "== $$f"; PYTHON=$(CURDIR)/$(PLOT_VENV)/bin/python bash ae/$$f/plot.sh; done
	@echo "figures written under figures/"

plot-%: $(PLOT_VENV)/.stamp
	PYTHON=$(CURDIR)/$(PLOT_VENV)/bin/python bash ae/$*/plot.sh

fig-%: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash ae/$*/run.sh

# The GPU run uses the machine's own python (container or scripts/env_install.sh), not
# $(VENV)'s CPU torch; the kit runs from src/ whether installed or not.
RESULTS ?=
RESULTS_DIR = $(or $(RESULTS),results/$(shell date +%F))
EXECUTOR ?= local
RUN_ARGS ?=
KIT = PYTHONPATH=$(CURDIR)/src$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) -m sparsevit
DOCKER_IMAGE ?= sparsevit-ae:0.1.0
COMPOSE = env UID=$$(id -u) GID=$$(id -g) docker compose -f docker/docker-compose.yml

# Every figure's cells (resumable: rerun with the same RESULTS), then plots and check.
# EXECUTOR=local|multi-gpu|slurm; RUN_ARGS e.g. "--cell-timeout 1800 --partition gpu".
full-run:
	$(KIT) full-run --out $(RESULTS_DIR) --executor $(EXECUTOR) $(RUN_ARGS)

# Fresh logs (default: the newest results/*) against backup_logs/, claim by claim.
# Reads logs only: runs in the quick-plot venv, no torch.
check: $(PLOT_VENV)/.stamp
	PYTHONPATH=$(CURDIR)/src $(PLOT_VENV)/bin/python -m sparsevit.kit.check \
	  $(if $(RESULTS),--results $(RESULTS))

env-check:
	$(KIT) env-check

docker-build:
	docker build -f docker/Dockerfile -t $(DOCKER_IMAGE) \
	  --build-arg UID=$$(id -u) --build-arg GID=$$(id -g) .

docker-quick-plot:
	mkdir -p results figures && $(COMPOSE) --profile quick-plot run --rm quick-plot

docker-full-run:
	mkdir -p results figures && $(COMPOSE) --profile full-run run --rm \
	  -e EXECUTOR=$(EXECUTOR) -e RESULTS=$(RESULTS_DIR) full-run

clean:
	rm -rf $(VENV) $(PLOT_VENV) figures .pytest_cache
