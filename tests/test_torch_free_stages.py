"""The stages that neither train nor decode run without torch.

prepare, subsample, bleu and plots load the whole params file, whose schema checks the
model, optimizer and schedule names (nmt/settings.py holds them, torch-free). Each
stage runs here for real, in a subprocess on a small project, and reports the modules
it loaded: never torch, nor the modules that implement the registries. (Their dvc.yaml
deps, tests/test_dvc_deps.py, then list no model code either.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nmt import fsio, trainlog

from .e2e import MULTI30K_FIXTURE, REPO, TINY, head_lines

FORBIDDEN = ("torch", "nmt.model", "nmt.kernels", "nmt.loss", "nmt.optim", "nmt.schedules")
# Runs a stage as `python -m` would, then writes what it imported, whatever its exit.
RUNNER = """
import atexit, json, runpy, sys
def report():
    with open(sys.argv[2], "w") as f:
        json.dump(sorted(m for m in sys.modules if m in {forbidden!r}), f)
atexit.register(report)
runpy.run_module(sys.argv[1], run_name="__main__", alter_sys=True)
""".format(forbidden=FORBIDDEN)


def run_stage(project: Path, stage: str) -> list[str]:
    """Run stages.<stage> in `project` with this repo's code; the forbidden modules it loaded."""
    report = project / f"{stage}.modules.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", RUNNER, f"stages.{stage}", str(report)],
                          cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"stages.{stage} failed:\n{proc.stderr[-2000:]}"
    return json.loads(report.read_text())


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A corpus of the first Multi30k pairs (the fixture) and the tiny end-to-end params."""
    root = tmp_path_factory.mktemp("torch-free")
    (root / "corpus").mkdir()
    for split, n in (("train", 300), ("val", 40), ("test", 40)):
        for lang in ("de", "en"):
            (root / "corpus" / f"{split}.{lang}").write_text(
                "".join(head_lines(MULTI30K_FIXTURE / f"{split}.{lang}", n)), encoding="utf-8")
    (root / "params.yaml").write_text(yaml.safe_dump(TINY), encoding="utf-8")
    return root


def test_prepare_subsample_bleu_and_plots_never_import_torch(project):
    assert run_stage(project, "prepare") == []
    assert (project / "data/prepared/spm.model").is_file()
    assert run_stage(project, "subsample") == []
    assert (project / "data/subsampled/train.src").is_file()
    # Translations and training logs as the stages before bleu and plots would leave them.
    for split in ("val", "test"):
        fsio.write_lines(project / f"data/translations/{split}.hyp",
                         fsio.read_utf8_lines(project / f"data/prepared/{split}.tgt"))
    rows = [{"epoch": e, "train_loss": 5.0 - e, "val_loss": 5.5 - e, "val_ppl": 100.0, "lr": 1e-3,
             "seconds": 1.0, "tokens_per_s": 1.0, "minutes": e / 60, "peak_memory_mb": 1.0}
            for e in (1, 2)]
    trainlog.write(project / "data/train/log", rows,
                   [{"step": s, "lr": 1e-3, "train_loss": 5.0} for s in (1, 2)])
    assert run_stage(project, "bleu") == []
    assert fsio.read_json(project / "data/bleu/metrics.json", "bleu")["test"]["bleu"] == 100.0
    assert run_stage(project, "plots") == []
    assert (project / "reports/figures/loss.png").is_file()


def test_the_runner_sees_an_import_of_torch(project):
    """The check itself: a stage that imports torch is reported."""
    (project / "stages_probe").mkdir(exist_ok=True)
    (project / "stages_probe" / "__init__.py").write_text("")
    (project / "stages_probe" / "uses_torch.py").write_text("import torch.nn\n")
    report = project / "probe.json"
    env = dict(os.environ, PYTHONPATH=f"{project}{os.pathsep}{REPO}")
    subprocess.run([sys.executable, "-c", RUNNER, "stages_probe.uses_torch", str(report)],
                   cwd=project, env=env, check=True)
    assert json.loads(report.read_text()) == ["torch"]
