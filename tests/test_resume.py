"""Resume after kill -9, fallback to the previous state, fresh start on other params,
determinism: the real `dvc repro train` on a tiny project, compared bit for bit.

Each killed run is a `dvc repro` in its own process group, killed (SIGKILL, dvc and
the stage together) just after the stage saved its resume state in the middle of
an epoch; the state file is watched for that (every save renames a new file onto it).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

import nmt.checkpoints as checkpoints
from nmt import params as P
from nmt.batching import collate
from nmt.model import ModelConfig
from nmt.tokenizer import SpecialIds
from nmt.trainer import Trainer

from . import e2e

STATE = Path("data/train/state/state.pt")
EPOCH_DONE = re.compile(r"nmt\.train: epoch (\d+): train loss")
RESUMED = re.compile(r"resuming from (\S+): epoch (\d+), batch (\d+), step (\d+)")
# Timings, speed and memory differ from run to run; everything else must not.
NOT_COMPARED = re.compile(r"seconds|minutes|hours|_per_s|memory|^device$")
# 800 pairs, 6 epochs of ~40 batches with dropout on (so the RNG states matter), resume
# state every 5 optimizer steps: ~6 s of training, long enough to kill it twice.
RESUME_PARAMS = {"model": {"dropout": 0.1},
                 "train": {"epochs": 6, "save_every_steps": 5, "keep_checkpoints": 3},
                 "swa": {"last_epochs": 3}}



# --- running and killing dvc repro -------------------------------------------------------------

def start_repro(project: Path, log: Path) -> subprocess.Popen:
    """`dvc repro train` in the background, in its own process group, output to `log`."""
    env = dict(e2e.env(), TQDM_DISABLE="1")
    with open(log, "w") as out:
        return subprocess.Popen([str(e2e.VENV_BIN / "dvc"), "repro", "train"], cwd=project,
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def finish_repro(project: Path, log: Path) -> str:
    proc = start_repro(project, log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    return log.read_text()


def state_version(project: Path) -> tuple[int, int] | None:
    """Which save state.pt is from: each save renames a new file onto it."""
    try:
        st = (project / STATE).stat()
    except FileNotFoundError:  # between save_state's moves
        return None
    return st.st_ino, st.st_mtime_ns


def kill_mid_epoch(project: Path, log: Path, after_epoch: int, delay: float = 0.0) -> None:
    """Start a repro; once epoch `after_epoch` has ended and the state has been saved again
    (so in the next epoch, mid-way), wait `delay` seconds (a step or two: work done since
    the save is lost) and kill -9 the whole process group."""
    proc = start_repro(project, log)
    seen, changes, deadline = None, 0, time.monotonic() + 120
    while changes < 2:
        assert proc.poll() is None, f"training ended before the kill:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        epochs = [int(e) for e in EPOCH_DONE.findall(log.read_text())]
        version = state_version(project)
        if epochs and max(epochs) >= after_epoch and version is not None and version != seen:
            changes += seen is not None
            seen = version
        time.sleep(0.005)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (project / STATE).exists() or (project / STATE.with_name("state.prev.pt")).exists()


def resumed_at(log_text: str) -> tuple[str, int, int, int]:
    found = RESUMED.findall(log_text)
    assert len(found) == 1, log_text[-3000:]
    path, epoch, batch, step = found[0]
    return path, int(epoch), int(batch), int(step)


# --- what a run produced -------------------------------------------------------------------------

def outputs(project: Path) -> dict:
    """Weights of the kept epochs, metrics without timings, and the loss logs."""
    weights = {}
    for f in sorted((project / "data/train/checkpoints").glob("epoch_*.pt")):
        _, state, _ = checkpoints.load_model_file(f)
        weights[f.name] = state
    metrics = json.loads((project / "data/train/metrics.json").read_text())
    live = project / "data/train/live"
    return {
        "weights": weights,
        "metrics": compared(metrics),
        "epochs": tsv_rows(project / "data/train/log/epochs.tsv"),
        "steps": tsv_rows(project / "data/train/log/steps.tsv"),
        # DVCLive's files, one per value (timings left out)
        "live": {str(f.relative_to(live)): f.read_text() for f in sorted(live.rglob("*.tsv"))
                 if not NOT_COMPARED.search(f.stem)},
    }


def compared(row: dict) -> dict:
    return {k: v for k, v in row.items() if not NOT_COMPARED.search(k)}


def tsv_rows(path: Path) -> list[dict]:
    header, *rows = [line.split("\t") for line in path.read_text().splitlines()]
    return [compared(dict(zip(header, row, strict=True))) for row in rows]


def assert_same(got: dict, want: dict) -> None:
    assert got["weights"].keys() == want["weights"].keys()
    for name, state in want["weights"].items():
        assert state.keys() == got["weights"][name].keys()
        for key, tensor in state.items():
            assert torch.equal(got["weights"][name][key], tensor), f"{name}: {key}"
    assert got["metrics"] == want["metrics"]
    assert got["epochs"] == want["epochs"]  # epoch, train_loss, val_loss, val_ppl, lr
    assert len(got["steps"]) == want["metrics"]["steps"]
    assert got["steps"] == want["steps"]
    assert {"epochs/plots/metrics/val_loss.tsv", "steps/plots/metrics/lr.tsv"} <= \
        want["live"].keys()
    assert got["live"] == want["live"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """The tiny project with prepare and subsample done and committed."""
    project = e2e.make_project(tmp_path_factory.mktemp("resume") / "base", n_train=800,
                               overrides=RESUME_PARAMS)
    e2e.dvc("repro", "subsample", cwd=project)
    e2e.commit_all(project, "prepared")
    return project


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory) -> dict:
    """The outputs of one uninterrupted training run."""
    project = e2e.clone_project(prepared, tmp_path_factory.mktemp("reference") / "proj")
    text = finish_repro(project, project.parent / "repro.log")
    assert "resuming" not in text
    return outputs(project)


@pytest.fixture
def project(prepared, tmp_path) -> Path:
    return e2e.clone_project(prepared, tmp_path / "proj")


# --- the tests ---------------------------------------------------------------------------

@pytest.mark.e2e
def test_two_fresh_runs_are_identical(project, reference):
    finish_repro(project, project.parent / "repro.log")
    assert_same(outputs(project), reference)


@pytest.mark.e2e
def test_killed_twice_resumes_to_bitwise_equal_weights(project, reference):
    logs = [project.parent / f"run{i}.log" for i in range(3)]

    kill_mid_epoch(project, logs[0], after_epoch=1, delay=0.03)
    kill_mid_epoch(project, logs[1], after_epoch=3, delay=0.07)
    final = finish_repro(project, logs[2])

    first = resumed_at(logs[1].read_text())
    second = resumed_at(final)
    # state.prev.pt when the kill fell inside a save, after state.pt was moved aside;
    # never because a kill left a broken file (that would log "trying an older state").
    assert {first[0], second[0]} <= {str(STATE), str(STATE.with_name("state.prev.pt"))}
    assert "older state" not in logs[1].read_text() + final
    assert first[1:3] >= (2, 1) and second[1:3] >= (4, 1), (first, second)  # (epoch, batch)
    assert first[3] < second[3]
    assert_same(outputs(project), reference)


@pytest.mark.e2e
def test_truncated_state_falls_back_to_the_previous_one(project, reference):
    kill_mid_epoch(project, project.parent / "run0.log", after_epoch=2)
    state = project / STATE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])

    final = finish_repro(project, project.parent / "run1.log")

    assert "state.pt: checkpoint is corrupt" in final and "trying an older state" in final
    assert resumed_at(final)[0] == str(STATE.with_name("state.prev.pt"))
    assert_same(outputs(project), reference)


@pytest.mark.e2e
def test_changed_params_start_fresh(project):
    kill_mid_epoch(project, project.parent / "run0.log", after_epoch=1)
    e2e.write_params(project, {"model": {"dropout": 0.2}})
    log = project.parent / "run1.log"

    proc = start_repro(project, log)
    deadline = time.monotonic() + 120
    while not re.search(r"nmt\.train: training \d+ parameters", log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    text = log.read_text()
    assert "made with other params, data or code: starting fresh" in text
    assert "resuming" not in text


# --- a kill inside save_state (no dvc): whatever moment, a state is left to resume from ---------

class Killed(BaseException):
    pass


@pytest.mark.parametrize("kill_at", [1, 2])
def test_kill_inside_save_state_still_resumes(tmp_path, monkeypatch, kill_at):
    """save_state moves the state to state.prev.pt, then renames the new state (its checksum
    inside) onto state.pt: two renames. Dying before either resumes at the last whole save."""
    p = P.from_dict({"model": {"d_model": 16, "nhead": 2, "dim_feedforward": 32,
                               "num_encoder_layers": 1, "num_decoder_layers": 1},
                     "schedule": {"name": "constant"}, "train": {"epochs": 2, "amp": "fp32"}})
    p.validate()
    cfg = ModelConfig.from_params(p.model, 30, 30, True, 0)
    data = [collate([([5, 6, 7], [7, 6, 5]), ([8, 9], [9, 8])], SpecialIds()) for _ in range(4)]
    t = Trainer(p, cfg, data, data[:1], tmp_path / "state", "fp")
    t.train_step(data[:1])
    t.save_state()  # step 1: becomes state.prev.pt
    t.train_step(data[:1])
    t.save_state()  # step 2
    t.train_step(data[:1])

    calls = 0
    real_replace = os.replace

    def dying_replace(src, dst):
        nonlocal calls
        calls += 1
        if calls == kill_at:
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(Killed):
        t.save_state()  # step 3
    monkeypatch.setattr(os, "replace", real_replace)

    resumed = Trainer(p, cfg, data, data[:1], tmp_path / "state", "fp")
    assert resumed.progress.step == 2


# --- what the resume state must not outlive ------------------------------------------------------

@pytest.mark.e2e
def test_training_code_edit_retrains_from_scratch(project, reference):
    """A finished run, then an edit to training code that changes the result: DVC reruns
    train, and the stage must train every step again, not republish the old weights."""
    finish_repro(project, project.parent / "repro0.log")
    trainer = project / "nmt/trainer.py"
    assert "def seed_everything(seed: int)" in trainer.read_text()
    with open(trainer, "a") as f:  # the global the loop calls, redefined: other initial weights
        f.write("\n\ndef seed_everything(seed: int) -> None:\n    random.seed(seed)\n"
                "    np.random.seed(seed)\n    torch.manual_seed(seed + 1)\n")

    text = finish_repro(project, project.parent / "repro.log")

    assert "Running stage 'train'" in text and "resuming" not in text
    assert "made with other params, data or code" in text  # the old state was found and refused
    got = outputs(project)
    assert got["metrics"]["steps"] == reference["metrics"]["steps"]
    assert got["weights"].keys() == reference["weights"].keys()
    for name, state in reference["weights"].items():
        assert not all(torch.equal(got["weights"][name][k], t) for k, t in state.items()), name


# --- live logs ------------------------------------------------------------------------------

@pytest.mark.e2e
def test_epoch_log_has_rows_while_training_runs(project, reference):
    """During `dvc repro`, each epoch's row is in data/train/log/epochs.tsv (and the run's
    metrics so far in data/train/metrics.json) as the epoch ends; what the finished stage
    leaves is the same as ever."""
    log = project.parent / "repro.log"
    epochs_tsv, metrics = project / "data/train/log/epochs.tsv", project / "data/train/metrics.json"
    proc = start_repro(project, log)
    seen, deadline = {}, time.monotonic() + 300
    while proc.poll() is None:
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        try:
            rows = len(epochs_tsv.read_text().splitlines()) - 1
            live = json.loads(metrics.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            rows, live = 0, {}
        if rows > 0 and "done:" not in log.read_text():
            seen[rows] = live.get("epochs")
        time.sleep(0.01)
    assert proc.returncode == 0, log.read_text()[-3000:]

    # rows 1..5 appeared one by one, each with the live metrics of the same epoch
    assert set(range(1, 6)) <= seen.keys(), seen
    assert all(seen[n] in (n, n - 1) for n in range(1, 6)), seen
    assert "\r" not in log.read_text()  # no progress-bar frames in a log file
    assert_same(outputs(project), reference)
