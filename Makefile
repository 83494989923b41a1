# we-repro: `make demo`, `make test`; `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXECUTOR ?= local
PROFILE ?= slurm/default.yaml
GRID_FLAGS = --executor $(EXECUTOR) $(if $(filter slurm,$(EXECUTOR)),--profile $(PROFILE))
TABLES := 1 2 3 4 5 6 7 8

.PHONY: help install test demo bench figures reproduce-all cluster-up cluster-down \
	$(addprefix reproduce-table,$(TABLES)) $(addprefix table,$(TABLES))

help:
	@echo "make install | test | demo | bench | reproduce-table1..8 | table1..8 | figures | reproduce-all | cluster-up | cluster-down"
	@echo "variables: EXECUTOR=local|slurm (default local), PROFILE=slurm/NAME.yaml (default slurm/default.yaml)"

install: $(VENV)/.install.stamp

$(VENV)/.install.stamp: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

test: install
	$(PY) -m pytest -q

demo: install
	$(PY) -m we.grid plan demo
	$(PY) -m we.grid submit demo --executor local --wait
	$(PY) -m we.grid collect demo

bench: install
	$(PY) -m we.bench

$(addprefix reproduce-table,$(TABLES)): reproduce-table%: install
	$(PY) -m we.grid submit table$* $(GRID_FLAGS)

$(addprefix table,$(TABLES)): table%: install
	$(PY) -m we.grid collect table$*

figures: install
	$(PY) -m we.report figures

reproduce-all: $(addprefix reproduce-table,$(TABLES))

cluster-up:
	bash slurm/install-debian.sh
	bash slurm/cluster-up.sh

cluster-down:
	bash slurm/cluster-down.sh
