# Two commands for a fresh machine:   make repro   and   make test
# Both create .venv and install the pinned requirements first.
SHELL := /bin/bash
VENV ?= .venv
# The Python that creates the venv (3.11 is what is tested) and the torch build:
# auto (CUDA when there is an NVIDIA driver), cpu or cuda. See scripts/install.py.
PYTHON ?= python3
TORCH ?= auto
PY := $(VENV)/bin/python
DVC := $(VENV)/bin/dvc
JOBS ?= 1
TEST_WORKERS ?= auto
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# Offline: use the Multi30k mirror beside the project when there is one.
ifeq ($(origin NMT_DATA_MIRROR), undefined)
  ifneq ($(wildcard ../shared/data/multi30k/train.de.gz),)
    export NMT_DATA_MIRROR := $(abspath ../shared/data/multi30k)
  endif
endif
export DVC_NO_ANALYTICS := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup setup-test lock repro show test test-fast report bench full hypotheses \
	queue-hypotheses run-queue sweep loss-check gpu-check bench-scale

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml scripts/install.py
	$(PYTHON) scripts/install.py --venv $(VENV) --torch $(TORCH)
	@touch $@

# setup plus the test-only packages (requirements-test.txt).
setup-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install -q -c constraints.txt -r requirements-test.txt
	@touch $@

# Maintainers: after changing requirements*.txt and installing, pin what is installed.
lock: setup-test
	$(PY) scripts/install.py --lock

# The whole pipeline on the default params (the hypothesis-testing baseline).
repro: setup
	@[ -d .git ] || git init -q
	PATH=$(abspath $(VENV))/bin:$$PATH $(DVC) repro
	@PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/nmtlab show 2>/dev/null || true

# The experiments table: changed params, test BLEU/chrF, val loss, epochs, cost
# (nmtlab show = dvc exp show with --drop/--keep). More options: make show SHOW_ARGS=--md
show: setup
	@PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/nmtlab show $(SHOW_ARGS)

# Unit tests and the end-to-end dvc tests.
# Both run the test files on pytest-xdist workers, one per CPU core (TEST_WORKERS=0 runs
# them in one process); --dist loadfile keeps each file, and its module fixtures, on one worker,
# and --no-loadscope-reorder hands out the files in tests/conftest.py's order, slowest first
# (xdist's own order, most tests first, left the few long end-to-end files for last).
test: setup-test
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest -q $(XDIST) -m "not cuda" tests

# Unit tests only (-m "not e2e"): no dvc, no real Multi30k, no download; minutes, not
# seconds (about 9 min wall, 2.6 min CPU, in one process on a 2-core machine under heavy
# load, before the xdist workers; not measured since).
test-fast: setup-test
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest -q $(XDIST) -m "not e2e and not cuda" tests

# The report's hypotheses (hypotheses.yaml), each one experiment from the baseline.
hypotheses: setup
	$(VENV)/bin/nmtlab hypotheses list

# Needs params.yaml and dvc.yaml committed; commit dvc.lock after `make repro` too,
# or every experiment reruns the baseline's stages. SEEDS=N queues each entry with
# training seeds 1..N as ENTRY-sK (BASELINE_SEEDS=M: the baseline with 1..M), NAMES=
# chooses entries; rerun it to queue only what is missing or failed (docs/seeds.md).
queue-hypotheses: setup
	PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/nmtlab hypotheses queue \
	  $(if $(SEEDS),--seeds $(SEEDS)) $(if $(BASELINE_SEEDS),--baseline-seeds $(BASELINE_SEEDS)) $(NAMES)

# Runs the queue (`dvc queue start -j JOBS`, JOBS default 1) and waits until it is
# done; fails naming the experiments that failed. Each job gets cores/JOBS torch
# threads through OMP_NUM_THREADS (set it to choose), which reaches the queued runs
# when this starts their worker; keep train.num_threads at 0 so it applies
# (changing that param would retrain every experiment).
run-queue: setup
	cores=$$(nproc 2>/dev/null || sysctl -n hw.ncpu); \
	export PATH=$(abspath $(VENV))/bin:$$PATH \
	  OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(( $$cores / $(JOBS) > 0 ? $$cores / $(JOBS) : 1 ))}; \
	$(VENV)/bin/nmtlab hypotheses start -j $(JOBS); status=$$?; \
	$(DVC) queue status; $(VENV)/bin/nmtlab show; exit $$status

# The catalogue (or NAMES) in rounds of training seeds: 2 per entry and the baseline's, then
# more (4, then 6) only for the entries still undecided (docs/seeds.md), JOBS at a time;
# then the report, with the tests calibrated on the baseline's runs. Rerun it to continue
# a sweep cut short. (A fixed number of seeds: make queue-hypotheses SEEDS=N, run-queue.)
sweep: setup
	cores=$$(nproc 2>/dev/null || sysctl -n hw.ncpu); \
	export PATH=$(abspath $(VENV))/bin:$$PATH \
	  OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(( $$cores / $(JOBS) > 0 ? $$cores / $(JOBS) : 1 ))}; \
	$(VENV)/bin/nmtlab hypotheses sweep -j $(JOBS) $(NAMES); status=$$?; \
	$(MAKE) report CALIBRATE=1 && exit $$status

# Every experiment against its reference, paired by training seed, with significance:
# writes the run records reports/runs/<code>/*.json (commit them), then
# reports/experiments.md + PNGs. CALIBRATE=1 first measures the tests on simulated A/A
# comparisons built from the baseline's runs (reports/calibration.json, minutes).
report: setup
	PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/nmtlab report $(if $(CALIBRATE),--calibrate)

# SmoothCE against torch's CrossEntropyLoss over label smoothing 0..0.5, with the figure
# reports/label_smoothing_check.png; fails if they differ by more than float32 rounding.
loss-check: setup
	$(VENV)/bin/nmtlab loss-check

# Training and decoding speed against plain baselines: a table and reports/bench.json.
bench: setup
	PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/nmtlab bench

# Prepare, subsample and the training set-up on Multi30k repeated to 29k, 1M and 4.5M pairs:
# wall time, CPU seconds and peak RSS (docs/scale.md, "A WMT-size corpus"; about 10 minutes
# and 3 GB of disk on 2 cores). SCALE_ARGS="--pairs 29000" for a quick look.
bench-scale: setup
	$(PY) scripts/bench_scale.py $(SCALE_ARGS)

# The full-data preset (README, "Full data"): all 29,000 pairs, under an hour on 2 CPU cores.
full: setup
	PATH=$(abspath $(VENV))/bin:$$PATH $(DVC) exp run -n full -S subsample.fraction=1.0 \
	  -S model.dropout=0.3 -S loss.label_smoothing=0.1 \
	  -S schedule.name=triangular -S schedule.warmup_steps=800 \
	  -S train.epochs=17 -S train.keep_checkpoints=5 -S train.keep_best=5 \
	  -S swa.best_by=val_loss -S swa.best_epochs=5 \
	  -S translate.beam_size=5 -S translate.length_penalty=1.0 \
	  -S train.budget_minutes=60 -S train.val_bleu=true

# On a CUDA machine: the CUDA tests, 2 epochs of bf16 training, the bench's training and
# decoding rows and two queued runs at once, in a throwaway clone; writes
# reports/gpu-check.txt. Without CUDA it stops with one line saying so (scripts/gpu_check.py).
gpu-check: setup-test
	$(PY) scripts/gpu_check.py
