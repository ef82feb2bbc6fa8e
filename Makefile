# pdl1_dls: two commands for a new user (`make demo`, `make test`), plus the developer loop.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARCH := $(shell uname -m)
# x86_64 installs exactly what CI tested: every package at the version (and sha256) pinned in the lock,
# made by `make lock` for Python 3.11 (torch/torchvision pinned there by constraints.txt).
# aarch64 has no lock: it installs torch==2.9.1 torchvision==0.24.1, then the ranges of pyproject.toml.
ifeq ($(ARCH),aarch64)
TORCH := torch==2.9.1 torchvision==0.24.1
LOCK :=
else
LOCK := requirements-x86_64.lock
endif
PIP_TOOLS := pip-tools==7.6.2
LOCK_UPGRADE ?= --upgrade
DEMO_OUT ?= runs/demo
export PDL1_DLS_DATA ?= $(abspath ../shared/data)

.PHONY: install lock demo demo-mri test test-all export docs bench browser help

help:
	@echo "make demo      create .venv, install, generate the synthetic study, reproduce the PET/CT paper, print the report path"
	@echo "make test      create .venv with the dev extras, run pytest and nbdev-test"
	@echo "make test-all  the same with the slow end-to-end checks"
	@echo "make lock      re-resolve pyproject.toml (+ dev extras, torch pins) into $(LOCK) (LOCK_UPGRADE= keeps the pins it can)"
	@echo "make export    nbdev-export + nbdev-clean (after editing notebooks in nbs/)"
	@echo "make docs      build the documentation site offline into _docs/"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# names installed in the venv that the lock does not list (left by an earlier install): removed, so the venv is the lock
EXTRAS = $(BIN)/python -c 'import re, sys, importlib.metadata as md; n = lambda s: re.sub(r"[-_.]+", "-", s).lower(); lock = {n(l.split("==")[0]) for l in open(sys.argv[1]) if "==" in l and l[0].isalnum()}; print(" ".join(sorted({n(d.metadata["Name"]) for d in md.distributions() if d.metadata["Name"]} - lock - {"pdl1-dls"})))' $(LOCK)

# installs (or refreshes) everything the library, notebooks and tests need; the stamp names the lock it came from
ifdef LOCK
$(VENV)/.installed: $(LOCK) pyproject.toml constraints.txt | $(BIN)/python
	@want=$$(sed -n 's/.*pip-compile with Python \([0-9.]*\).*/\1/p' $(LOCK)); \
	have=$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	if [ "$$want" != "$$have" ]; then \
	  echo "$(LOCK) is for Python $$want; $(VENV) has Python $$have: rm -r $(VENV) && make install PYTHON=python$$want"; exit 1; fi
	awk '/^pip==/ {p = 1} p && !/^ *#/ {print} p && /^ *#/ {exit}' $(LOCK) > $(VENV)/pip.lock
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r $(VENV)/pip.lock
	rm $(VENV)/pip.lock
	$(BIN)/pip install -q --require-hashes -r $(LOCK)
	@extras=$$($(EXTRAS)); if [ -n "$$extras" ]; then echo "not in $(LOCK), uninstalling: $$extras"; $(BIN)/pip uninstall -y -q $$extras; fi
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	sha256sum $(LOCK) > $@
else
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	echo "no lock on $(ARCH): pyproject.toml ranges with $(TORCH)" > $@
endif

# re-resolves the lock from pyproject.toml (main + dev), constraints.txt and pip itself, with every file's sha256,
# in a throwaway venv (pip-tools is not part of the project's environment); then `make install` applies it
lock:
	@if [ -z "$(LOCK)" ]; then echo "no lock on $(ARCH) (see the top of the Makefile)"; exit 1; fi
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PYTHON) -m venv $$tmp && $$tmp/bin/python -m pip install -q --upgrade pip $(PIP_TOOLS) && \
	echo pip | CUSTOM_COMPILE_COMMAND="make lock" $$tmp/bin/pip-compile -q $(LOCK_UPGRADE) --extra dev -c constraints.txt --generate-hashes --allow-unsafe \
	  --strip-extras --no-emit-index-url --no-emit-find-links -o $(LOCK) pyproject.toml -

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
