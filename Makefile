# Two commands for a fresh machine:   make repro   and   make test
# Both create .venv and install the pinned requirements first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DVC := $(VENV)/bin/dvc
JOBS ?= 1

# Offline: use the Multi30k mirror beside the project when there is one.
ifeq ($(origin NMT_DATA_MIRROR), undefined)
  ifneq ($(wildcard ../shared/data/multi30k/train.de.gz),)
    export NMT_DATA_MIRROR := $(abspath ../shared/data/multi30k)
  endif
endif
export DVC_NO_ANALYTICS := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup repro test test-fast report bench hypotheses queue-hypotheses run-queue clean-exps

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@touch $@

# The whole pipeline on the default params (the hypothesis-testing baseline).
repro: setup
	@[ -d .git ] || git init -q
	PATH=$(abspath $(VENV))/bin:$$PATH $(DVC) repro
	PATH=$(abspath $(VENV))/bin:$$PATH $(DVC) exp show --no-pager --md --only-changed 2>/dev/null || true

# Unit tests and the end-to-end dvc tests.
test: setup
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest -q tests

# Unit tests only (seconds).
test-fast: setup
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest -q -m "not e2e" tests

# Every experiment against its baseline, with significance: reports/experiments.md + PNGs.
report: setup
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m stages.report
