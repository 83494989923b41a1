# we-repro: `make demo`, `make test`; `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXECUTOR ?=
PROFILE ?= slurm/default.yaml
WAIT ?=
ALLOW_CPU_MARATHON ?=
GRID_FLAGS = --executor $(EXECUTOR) $(if $(filter slurm,$(EXECUTOR)),--profile $(PROFILE)) $(if $(WAIT),--wait) \
	$(if $(ALLOW_CPU_MARATHON),--allow-cpu-marathon)
# reproduce-*: without EXECUTOR, print the plan of each grid ($(1)) and the two ways to run it; start nothing
define need_executor
	@if [ -z "$(EXECUTOR)" ]; then \
	  for g in $(1); do $(PY) -m we.grid plan $$g || exit 2; echo; done; \
	  echo "nothing started: say where the cells run:"; \
	  echo "  make $@ EXECUTOR=slurm PROFILE=slurm/NAME.yaml   # jobs on a SLURM cluster (slurm/README.md)"; \
	  echo "  make $@ EXECUTOR=local                           # this machine; without a GPU add ALLOW_CPU_MARATHON=1"; \
	  exit 2; fi
endef
TABLES := 1 2 3 4 5 6 7 8
FIGURES := 2 3 5 6

.PHONY: help install test test-slow mutation demo bench figures reproduce-figures reproduce-all cluster-up cluster-down \
	$(addprefix reproduce-table,$(TABLES)) $(addprefix table,$(TABLES))

help:
	@echo "make install | test | test-slow | mutation | demo | bench | reproduce-table1..8 | table1..8 | reproduce-figures | figures | reproduce-all | cluster-up | cluster-down"
	@echo "variables: EXECUTOR=local|slurm (reproduce-*: required; without it they print the plan and stop),"
	@echo "  PROFILE=slurm/NAME.yaml (default slurm/default.yaml), WAIT=1 (block until done),"
	@echo "  ALLOW_CPU_MARATHON=1 (EXECUTOR=local without a GPU: start long grids anyway)"
	@echo "make mutation: mutation testing of we/core and we/methods (mutmut, well under an hour on 2 cores; docs/testing.md)"
	@echo "watch and stop a grid: .venv/bin/we-grid status GRID (epoch, top-1, ETA per running cell); .venv/bin/we-grid cancel GRID"

install: $(VENV)/.install.stamp

# the pinned requirements, then this checkout as an editable package: .venv/bin/we-train, we-grid, we-report, we-bench
$(VENV)/.install.stamp: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# the suite without its longest end-to-end tests (marked slow); `make test-slow` runs those, CI runs both
test: install
	$(PY) -m pytest -q -ra -m "not slow" tests

test-slow: install
	$(PY) -m pytest -q -ra -m slow tests

# not part of `make test`: mutmut ([tool.mutmut] in pyproject.toml) mutates we/core and we/methods in
# mutants/ (kept: a second run tests only what changed), then results/mutation/summary.md
mutation: install
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 $(VENV)/bin/mutmut run --max-children 2
	$(PY) tests/mutation_report.py results/mutation

demo: install
	$(PY) -m we.grid plan demo
	$(PY) -m we.grid submit demo --executor local --wait
	$(PY) -m we.grid collect demo

bench: install
	$(PY) -m we.bench

# each table has a grid with the paper's semantics and one with the authors' script and recipe
$(addprefix reproduce-table,$(TABLES)): reproduce-table%: install
	$(call need_executor,table$* table$*-official)
	$(PY) -m we.grid submit table$* $(GRID_FLAGS)
	$(PY) -m we.grid submit table$*-official $(GRID_FLAGS)

$(addprefix table,$(TABLES)): table%: install
	$(PY) -m we.grid collect table$*
	$(PY) -m we.grid collect table$*-official

reproduce-figures: install
	$(call need_executor,$(addprefix figure,$(FIGURES)))
	set -e; for f in $(FIGURES); do $(PY) -m we.grid submit figure$$f $(GRID_FLAGS); done

figures: install
	set -e; for f in $(FIGURES); do $(PY) -m we.grid collect figure$$f; done
	$(PY) -m we.report figures

# tables first, in order, never with -j: Table 2 owns the runs that Tables 5-8 and Figures 2/5/6 reuse
reproduce-all: install
	$(call need_executor,$(addprefix table,$(TABLES)) $(addprefix figure,$(FIGURES)))
	set -e; for t in $(TABLES); do $(MAKE) --no-print-directory reproduce-table$$t; done
	$(MAKE) --no-print-directory reproduce-figures

cluster-up:
	bash slurm/install-debian.sh
	bash slurm/cluster-up.sh

cluster-down:
	bash slurm/cluster-down.sh
