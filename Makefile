# pdl1_dls: two commands for a new user (`make demo`, `make test`), plus the developer loop.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH := torch==2.9.1 torchvision==0.24.1
PIPC :=
else
TORCH := torch==2.14.1 torchvision==0.29.1
PIPC := -c constraints.txt
endif
DEMO_OUT ?= runs/demo
export PDL1_DLS_DATA ?= $(abspath ../shared/data)

.PHONY: install demo demo-mri test test-all export docs bench browser help

help:
	@echo "make demo      create .venv, install, generate the synthetic study, reproduce the PET/CT paper, print the report path"
	@echo "make test      create .venv with the dev extras, run pytest and nbdev-test"
	@echo "make test-all  the same with the slow end-to-end checks"
	@echo "make export    nbdev-export + nbdev-clean (after editing notebooks in nbs/)"
	@echo "make docs      build the documentation site offline into _docs/"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# installs (or refreshes) everything the library, notebooks and tests need
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q $(PIPC) $(TORCH)
	$(BIN)/pip install -q $(PIPC) -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/pdl1-dls reproduce --manifest data_manifests/demo_petct.yaml --out $(DEMO_OUT)

demo-mri: install
	$(BIN)/pdl1-dls reproduce --manifest data_manifests/demo_mri.yaml --out runs/demo_mri

# Debian's chromium + chromedriver for the browser tests (docs pages, Voila explorers); needs root.
# Without them the browser tests skip and say why.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	      || echo "could not install chromium: browser tests will skip"; \
	  else echo "chromium/chromedriver not installed (apt-get install chromium chromium-driver): browser tests will skip"; fi; \
	fi

test: install browser
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=25 tests
	OMP_WAIT_POLICY=PASSIVE $(BIN)/nbdev-test --n-workers 2  # two notebooks at once: see tests/conftest.py

test-all: install browser
	$(BIN)/python -m pytest -n 2 --dist loadfile tests
	$(BIN)/python -m pytest -m slow --durations=0 tests  # the end-to-end runs one at a time: each trains on both cores
	OMP_WAIT_POLICY=PASSIVE $(BIN)/nbdev-test --n-workers 2 --flags slow

export: install
	$(BIN)/nbdev-export
	$(BIN)/nbdev-clean

# documentation site, built offline into _docs/ (Quarto users: nbdev-docs builds the full site)
docs: install
	$(BIN)/python tools/docs.py --out _docs

bench: install
	for b in benchmarks/*.py; do $(BIN)/python $$b; done
