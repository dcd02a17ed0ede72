"""Determinism as the README claims it: the defaults (train.amp auto, which is bf16 autocast
on a CPU with AMX; train.num_threads 0, torch's own thread count; dropout on) give the same
weights, translations and BLEU bit for bit, run after run, on one machine and torch build.

The other end-to-end tests pin one thread and fp32 for speed; this one does not.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

import nmt.checkpoints as checkpoints
from nmt import device as devices

from . import e2e

pytestmark = pytest.mark.e2e

# The defaults that matter here; 3 epochs on 200 pairs keep two runs short on a busy machine.
DEFAULTS = {"model": {"dropout": 0.1}, "train": {"amp": "auto", "num_threads": 0, "epochs": 3},
            "swa": {"last_epochs": 2}}
NOT_COMPARED = re.compile(r"seconds|minutes|hours|_per_s|memory")


def repro_with_default_threads(project: Path) -> None:
    env = e2e.env()
    env.pop("OMP_NUM_THREADS")  # e2e pins one thread; the defaults use them all
    proc = subprocess.run([str(e2e.VENV_BIN / "dvc"), "repro"], cwd=project, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def results(project: Path) -> dict:
    data = project / "data"
    weights = {f.name: checkpoints.load_model_file(f)[1]
               for f in [*sorted((data / "train/checkpoints").glob("epoch_*.pt")),
                         data / "model/averaged.pt"]}
    train = json.loads((data / "train/metrics.json").read_text())
    epochs = (data / "train/log/epochs.tsv").read_text().splitlines()
    header = epochs[0].split("\t")
    return {
        "weights": weights,
        "train": {k: v for k, v in train.items() if not NOT_COMPARED.search(k)},
        "epochs": [[c for h, c in zip(header, row.split("\t")) if not NOT_COMPARED.search(h)]
                   for row in epochs[1:]],
        "hyps": {s: (data / f"translations/{s}.hyp").read_text() for s in ("val", "test")},
        "bleu": json.loads((data / "bleu/metrics.json").read_text()),
    }


def test_default_amp_and_threads_give_identical_weights_and_bleu(tmp_path):
    base = e2e.make_project(tmp_path / "base", n_train=200, n_eval=30, overrides=DEFAULTS)
    e2e.dvc("repro", "subsample", cwd=base)
    e2e.commit_all(base, "prepared")
    runs = []
    for name in ("first", "second"):
        project = e2e.clone_project(base, tmp_path / name)
        repro_with_default_threads(project)
        runs.append(results(project))
    first, second = runs

    assert first["train"]["bf16"] == devices.use_bf16("auto", torch.device("cpu"))
    assert first["weights"].keys() == second["weights"].keys()
    for name, state in first["weights"].items():
        for key, tensor in state.items():
            assert torch.equal(second["weights"][name][key], tensor), f"{name}: {key}"
    assert first["train"] == second["train"] and first["epochs"] == second["epochs"]
    assert first["hyps"] == second["hyps"] and first["bleu"] == second["bleu"]
