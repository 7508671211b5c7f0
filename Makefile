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

.PHONY: help setup test lint quick-plot full-run check env-check clean
help:
	@echo "make quick-plot   every figure from backup_logs/ (no GPU, ~1 min)"
	@echo "make test         the test suite (what CI runs)"
	@echo "make setup        create $(VENV) with the kit, torch, triton and test tools"
	@echo "make fig-NAME     run one figure's experiments (ae/NAME/run.sh)"
	@echo "make plot-NAME    plot one figure from its backup logs"
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

# Filled by the AE-kit stage (issue 6): every figure on the GPU, then `check`.
full-run check env-check:
	@echo "make $@: not implemented yet (see README, 'Status')"; exit 1

clean:
	rm -rf $(VENV) $(PLOT_VENV) figures .pytest_cache
