"""Data-parallel training for real: the train stage under torchrun, 2 gloo processes on
this CPU (nmt/distributed.py, docs/scale.md).

Two processes with accum_steps 1 take the same 2 batches a step as one process with
accum_steps 2, so their losses and weights must agree up to float rounding.
Tolerances: per-step train loss within 1e-4 (steps.tsv rounds to 5 decimals), final
weights within 1e-4 absolute. Measured: equal to the bit, since with 2 ranks each
rank's gradient is scaled by 2 and DDP's mean halves the sum, both exact in floating
point (docs/scale.md); more ranks or another reduction order may differ in the last bits. Every file the stage writes must come from
rank 0, and a run killed mid-epoch (every process) resumes and ends where an
uninterrupted 2-process run ends.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from nmt import checkpoints

from . import e2e

pytestmark = pytest.mark.e2e

# 2 epochs of ~15 steps, 2 batches a step; an odd batch count gives the last window
# one batch, so rank 1 trains on a stand-in batch with weight 0 there.
PARAMS = {"train": {"epochs": 2, "batch_tokens": 300, "save_every_steps": 1,
                    "keep_checkpoints": 2, "num_threads": 1}}
LOSS_TOL = 1e-4
WEIGHT_TOL = 1e-4

# Loaded into every Python process of a run (launcher, torchrun, ranks): logs each file
# the project's atomic writers create, with the writer's RANK ("-" outside torchrun).
SITECUSTOMIZE = '''
import os
from nmt import fsio

def _logged(fn):
    def wrapper(path, *args, **kwargs):
        with open(os.environ["NMT_WRITES_LOG"], "a") as f:
            f.write(f"{os.environ.get('RANK', '-')} {path}\\n")
        return fn(path, *args, **kwargs)
    return wrapper

fsio.atomic_path = _logged(fsio.atomic_path)
fsio.atomic_dir = _logged(fsio.atomic_dir)
'''


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny project after prepare and subsample; each run trains in its own copy."""
    project = e2e.make_project(tmp_path_factory.mktemp("ddp") / "proj", overrides=PARAMS)
    e2e.use_synthetic_corpus(project)
    e2e.dvc("repro", "subsample", cwd=project)
    hook = project / "hook"  # git-ignored by nothing, but no stage reads it
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return project


def copy_with(prepared: Path, dest: Path, train: dict) -> Path:
    shutil.copytree(prepared, dest, symlinks=True)
    e2e.write_params(dest, {"train": train})
    return dest


def stage(project: Path) -> subprocess.Popen:
    env = e2e.env()
    env.update(PYTHONPATH=f"{project / 'hook'}{os.pathsep}{project}",
               NMT_WRITES_LOG=str(project / "writes.log"))
    return subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def train(project: Path) -> str:
    proc = stage(project)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    return err


def losses(project: Path) -> list[float]:
    with open(project / "data/train/log/steps.tsv") as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f, delimiter="\t")]


def weights(project: Path) -> dict[str, torch.Tensor]:
    return checkpoints.load(project / "data/train/state/state.pt")["model"]


def writers(project: Path) -> set[str]:
    return {line.split()[0] for line in (project / "writes.log").read_text().splitlines()}


@pytest.fixture(scope="module")
def runs(prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    one = copy_with(prepared, root / "one", {"accum_steps": 2})
    two = copy_with(prepared, root / "two", {"accum_steps": 1, "nproc_per_node": 2})
    logs = {"one": train(one), "two": train(two)}
    return one, two, logs


def test_two_processes_match_one_with_the_same_global_batch(runs):
    one, two, logs = runs
    a, b = losses(one), losses(two)
    assert len(a) == len(b) > 20
    loss_diff = max(abs(x - y) for x, y in zip(a, b))
    wa, wb = weights(one), weights(two)
    weight_diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    scale = max(float(w.abs().max()) for w in wa.values())
    print(f"\n1 vs 2 processes over {len(a)} steps: max |loss diff| {loss_diff:.2e}, "
          f"max |weight diff| {weight_diff:.2e} (largest weight {scale:.2f})")
    assert loss_diff <= LOSS_TOL
    assert weight_diff <= WEIGHT_TOL
    m1 = json.loads((one / "data/train/metrics.json").read_text())
    m2 = json.loads((two / "data/train/metrics.json").read_text())
    assert (m1["ranks"], m2["ranks"]) == (1, 2)
    assert m1["global_batch_tokens"] == m2["global_batch_tokens"] == 600
    assert m1["steps"] == m2["steps"] and m1["tokens_seen"] == m2["tokens_seen"]
    assert "global batch: 300 tokens x 1 accumulation x 2 rank(s) = 600 tokens" in logs["two"]


def test_only_rank_0_writes(runs):
    one, two, _ = runs
    assert writers(one) == {"-"}  # one process: no torchrun, no RANK
    assert writers(two) == {"0"}
    epochs = sorted(p.name for p in (two / "data/train/checkpoints").glob("epoch_*.pt"))
    assert epochs == ["epoch_001.pt", "epoch_002.pt"]


def test_killed_two_process_run_resumes_to_the_same_end(prepared, runs, tmp_path):
    _, two, _ = runs
    killed = copy_with(prepared, tmp_path / "killed", {"accum_steps": 1, "nproc_per_node": 2})
    proc = stage(killed)
    state = killed / "data/train/state/state.pt"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # mid-epoch 1: a few step saves after the first
        if state.exists() and (killed / "writes.log").read_text().count("state.pt") >= 5:
            break
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    everything = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    for pid in everything:  # the launcher, torchrun and both ranks, as a crash would
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    proc.communicate()
    saved = checkpoints.load(state)["progress"]
    assert saved["epoch"] == 1 and 0 < saved["step"]

    log = train(killed)
    assert f"resuming from {state.relative_to(killed)}: epoch 1" in log
    assert losses(killed) == losses(two)
    wk, w2 = weights(killed), weights(two)
    assert all(torch.equal(wk[k], w2[k]) for k in w2)


def test_batch_tokens_auto_trains_with_the_probed_size(prepared, tmp_path):
    """The stage with train.batch_tokens: auto on this CPU: the size is logged, trained with
    and recorded (this tiny corpus fits in one batch, so the whole set is the choice)."""
    auto = copy_with(prepared, tmp_path / "auto", {"batch_tokens": "auto", "epochs": 6})
    log = train(auto)
    metrics = json.loads((auto / "data/train/metrics.json").read_text())
    chosen = metrics["batch_tokens"]
    assert isinstance(chosen, int) and chosen > 300
    assert f"train.batch_tokens: auto chose {chosen} tokens on cpu" in log
    assert metrics["global_batch_tokens"] == chosen
