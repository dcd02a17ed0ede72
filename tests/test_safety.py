"""Safe loading: checkpoints that would run code, truncated or corrupt files, a NaN loss."""
from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nmt.checkpoints as checkpoints
from nmt import params as P
from nmt.batching import collate
from nmt.errors import UserError
from nmt.model import ModelConfig
from nmt.trainer import NonFiniteLoss, Trainer

REPO = Path(__file__).resolve().parents[1]
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d nmt[\w.]*: ")
V = 30


class MakesMarker:
    """Unpickling this calls os.mkdir(marker): the stand-in for any code a file could run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def evil_model_file(path: Path, marker: Path, *, sidecar: bool = True) -> Path:
    """A model file of the project's format whose state_dict carries the code object."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": checkpoints.FORMAT, "config": {}, "info": {},
                "state_dict": {"w": torch.zeros(2), "x": MakesMarker(marker)}}, path)
    if sidecar:  # a matching checksum: the refusal must come from the loader, not the hash
        path.with_name(path.name + ".sha256").write_text(checkpoints.sha256_file(path) + "\n")
    return path


def tiny_cfg() -> ModelConfig:
    p = P.from_dict({"model": {"d_model": 16, "nhead": 2, "dim_feedforward": 32,
                               "num_encoder_layers": 1, "num_decoder_layers": 1}})
    return ModelConfig.from_params(p.model, V, V, True, 0)


# --- code in a checkpoint ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["torch_zip", "plain_pickle"])
def test_checkpoint_with_code_is_refused_and_nothing_runs(tmp_path, kind):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    if kind == "torch_zip":
        evil_model_file(path, marker)
    else:
        path.write_bytes(pickle.dumps({"state_dict": MakesMarker(marker)}))
    assert not marker.exists()

    with pytest.raises(UserError) as err:
        checkpoints.load(path)

    message = str(err.value)
    assert message.startswith(f"{path}: refused to load") and "could run code" in message
    assert "weights_only" not in message  # not torch's advice to load it unsafely
    assert "\n" not in message
    assert not marker.exists()


def run_stage(project: Path, stage: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    return subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def the_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and not LOG_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("stage, rel", [
    ("swa_average", "data/train/checkpoints/epoch_001.pt"),
    ("translate", "data/model/averaged.pt"),
])
def test_stage_refuses_checkpoint_with_code(tmp_path, stage, rel):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    (project / "data/train").mkdir(parents=True)
    (project / "data/train/metrics.json").write_text('{"epochs": 1, "stopped_by": "epochs"}')
    marker = tmp_path / "MARKER"
    evil_model_file(project / rel, marker)
    outputs = {p for p in project.rglob("*")}

    line = the_error_line(run_stage(project, stage))

    assert line.startswith(f"error: {rel}: refused to load") and "global posix.mkdir" in line
    assert not marker.exists()
    assert {p for p in project.rglob("*")} == outputs  # no data/model, no data/translations


# --- truncated and corrupt files -----------------------------------------------------------

def test_truncated_or_corrupt_checkpoint_is_reported(tmp_path):
    path = tmp_path / "epoch_001.pt"
    cfg = tiny_cfg()
    checkpoints.save_model(path, cfg, torch.nn.Linear(4, 4).state_dict())
    whole = path.read_bytes()
    sidecar = path.with_name(path.name + ".sha256")

    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0x01  # one bit, which the zip reader alone might miss
    path.write_bytes(bytes(flipped))
    with pytest.raises(UserError, match=r"epoch_001\.pt: checkpoint is corrupt \(sha256 "):
        checkpoints.load(path)
    path.write_bytes(whole[: len(whole) // 2])  # a cut-off copy
    with pytest.raises(UserError, match=r"epoch_001\.pt: checkpoint is corrupt \(sha256 "):
        checkpoints.load(path)
    sidecar.unlink()  # no checksum: the zip reader still notices the cut
    with pytest.raises(UserError, match=r"epoch_001\.pt: unreadable checkpoint \("):
        checkpoints.load(path)
    path.write_bytes(b"")
    with pytest.raises(UserError, match=r"epoch_001\.pt: checkpoint is empty"):
        checkpoints.load(path)
    path.write_bytes(whole)
    assert checkpoints.load(path)["format"] == checkpoints.FORMAT


# --- a NaN loss ------------------------------------------------------------------------------

def batches(n: int) -> list:
    rng = random.Random(0)
    out = []
    for _ in range(n):
        pairs = []
        for _ in range(6):
            s = [rng.randrange(4, V) for _ in range(rng.randint(2, 8))]
            pairs.append((s, s[::-1]))
        out.append(collate(pairs, 0, 2, 3))
    return out


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_state(tmp_path):
    p = P.from_dict({"model": {"d_model": 16, "nhead": 2, "dim_feedforward": 32,
                               "num_encoder_layers": 1, "num_decoder_layers": 1},
                     "schedule": {"name": "constant"},
                     "train": {"epochs": 3, "amp": "fp32", "save_every_steps": 2,
                               "keep_checkpoints": 2}})
    p.validate()
    data = batches(3)
    state_dir = tmp_path / "state"
    t = Trainer(p, tiny_cfg(), data, data[:1], state_dir, "fp")
    clean = t.loss_on

    def nan_at_step_5(batch, epsilon):
        loss, nll = clean(batch, epsilon)
        if t.progress.step + 1 == 5:
            return loss * float("nan"), float("nan")
        return loss, nll

    t.loss_on = nan_at_step_5

    with pytest.raises(NonFiniteLoss) as err:
        t.run()

    message = str(err.value)
    assert "loss is nan at step 5 (epoch 2)" in message and str(state_dir) in message
    state = checkpoints.load(state_dir / "state.pt")
    assert state["progress"]["step"] == 4  # saved every 2 steps: the last good one
    assert (state["progress"]["epoch"], state["progress"]["batch_pos"]) == (2, 1)
    for name, tensor in t.model.state_dict().items():  # the failed step changed nothing
        assert torch.isfinite(state["model"][name]).all(), name
        assert torch.equal(state["model"][name], tensor), name
    assert checkpoints.load(state_dir / "state.prev.pt")["progress"]["step"] == 3

    resumed = Trainer(p, tiny_cfg(), data, data[:1], state_dir, "fp")
    assert resumed.progress.step == 4  # a rerun (with a fix) continues from there
