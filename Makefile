# Two entry points do all set-up on a fresh machine:
#   make run   install, then run the whole pipeline on the embedded digits dataset (CPU)
#   make test  install, then run the test suite (unit, end-to-end Snakemake + DVC, lint)
#   make test-fast  the inner loop: unit and property tests only (no e2e; docs/design.md times both)
SHELL := /bin/bash
# The interpreter the venv is made from: the newest supported one on PATH, or PYTHON=...
# Supported: every pin of requirements.lock has a wheel for it (tools/resolvable_pythons.py
# checks); the tests and the golden md5s run on 3.11 (README, "Python versions").
SUPPORTED_PYTHONS := 3.13 3.12 3.11
# (Asked to run, not just found: a pyenv shim of a version not selected exists but fails.)
PYTHON ?= $(firstword $(foreach v,$(SUPPORTED_PYTHONS),\
  $(shell python$(v) -c 'import sys; print(sys.executable)' 2>/dev/null)))
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# Stage commands are plain `python -m pipeline ...`: put the venv first on PATH so that
# Snakemake and DVC both run them with the venv's interpreter.
export PATH := $(BIN):$(PATH)
# Where `make run` keeps the default DVC remote (a local directory, outside the repo).
DVC_REMOTE ?= $(HOME)/.cache/supcon-geometry/dvc-remote
CORES ?= all

.PHONY: install run test test-fast lint bench clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(BIN)/python || { \
	  test -n "$(PYTHON)" || { echo "make: no supported Python on PATH: install one of" \
	    "$(addprefix python,$(SUPPORTED_PYTHONS)) or set PYTHON=/path/to/python3.x" >&2; exit 1; }; \
	  $(PYTHON) -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' || { \
	    echo "make: PYTHON=$(PYTHON) is not a supported Python (3.11 to 3.13, pyproject.toml):" \
	      "$$($(PYTHON) --version 2>&1 | head -n 1)" >&2; exit 1; }; \
	  echo "$(PYTHON) -m venv $(VENV)"; $(PYTHON) -m venv $(VENV); }
	# requirements.lock pins every transitive version: same versions -> same bytes.
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

run: install
	dvc config --local cache.dir "$(CURDIR)/.dvc/cache"
	mkdir -p "$(DVC_REMOTE)"
	dvc remote add --local --default --force local "$(DVC_REMOTE)"
	snakemake --cores $(CORES)
	dvc status
	dvc push --quiet
	# The run must reproduce the committed dvc.lock and the generated results text byte for
	# byte (portable numerics): any drift is named and fails the run.
	python -m pipeline results --check
	@echo "figures: data/figures/  summary: data/summary/summary.csv  results: docs/results.md"

test: install
	# The report test opens report.html in headless Chromium (Debian's `chromium`); CI runs
	# as root with Debian's package registry. Installed once, skipped when already present.
	command -v chromium >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
		|| echo "WARNING: could not install chromium (not root?): the report test will skip"
	$(BIN)/python -m pytest

# Everything but the tests marked e2e (pipeline runs in subprocesses): for the edit-test loop.
# `make test` (CI's) runs them all.
test-fast: install
	$(BIN)/python -m pytest -m "not e2e"

lint: install
	ruff check pipeline tests
	snakemake --lint

# Every pipeline output lies under data/ (ignored by git, tracked by DVC); only data/README.md
# is committed. The DVC cache and remote stay, so `dvc checkout` can bring outputs back.
clean:
	rm -rf .snakemake logs
	find data -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
