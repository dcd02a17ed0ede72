"""Safe loading and writing: checkpoints that would run code; truncated, corrupt or foreign
files; a real kill -9 mid-write; leftovers swept; other damaged intermediates; a NaN loss."""
from __future__ import annotations

import collections
import dataclasses
import gzip
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import nmt.checkpoints as checkpoints
from nmt import fsio, params as P
from nmt.batching import collate
from nmt.errors import UserError
from nmt.model import ModelConfig, Seq2SeqTransformer
from nmt.trainlog import read as read_tsv
from nmt.tokenizer import SpecialIds, Tokenizers
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


def evil_model_file(path: Path, marker: Path) -> Path:
    """A model file of the project's format whose state_dict carries the code object, with a
    matching checksum header: the refusal must come from the loader, not the checksum."""
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoints.save(path, {"format": checkpoints.FORMAT, "config": {}, "info": {},
                            "state_dict": {"w": torch.zeros(2), "x": MakesMarker(marker)}})
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
        path.write_bytes(checkpoints.frame(pickle.dumps({"state_dict": MakesMarker(marker)})))
    assert not marker.exists()

    with pytest.raises(UserError) as err:
        checkpoints.load(path)

    message = str(err.value)
    assert message.startswith(f"{path}: refused to load")
    if kind == "torch_zip":
        assert "(global posix.mkdir), which could run code" in message
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
    (project / "data/train/log").mkdir()
    (project / "data/train/log/epochs.tsv").write_text("epoch\tval_loss\n1\t2.0\n")
    marker = tmp_path / "MARKER"
    evil_model_file(project / rel, marker)
    outputs = {p for p in project.rglob("*")}

    line = the_error_line(run_stage(project, stage))

    assert line.startswith(f"error: {rel}: refused to load") and "global posix.mkdir" in line
    assert not marker.exists()
    assert {p for p in project.rglob("*")} == outputs  # no data/model, no data/translations


# --- truncated, corrupt and foreign files: one line, never a traceback, never a silent load ----

def model_file(path: Path) -> bytes:
    """A small model file of this project at `path`; returns its bytes."""
    cfg = tiny_cfg()
    torch.manual_seed(0)
    checkpoints.save_model(path, cfg, Seq2SeqTransformer(cfg).state_dict(), {"epoch": 1})
    return path.read_bytes()


def refused(path: Path) -> str:
    """The UserError message loading `path` gives; fails if it loads or raises anything else."""
    with pytest.raises(UserError) as err:
        checkpoints.load_model_file(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message


def test_checkpoint_is_one_file_with_its_checksum(tmp_path):
    path = tmp_path / "epoch_001.pt"
    whole = model_file(path)
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_001.pt"]  # no sidecar to lose
    assert whole.startswith(checkpoints.MAGIC)
    cfg, state, info = checkpoints.load_model_file(path)
    assert cfg == tiny_cfg() and info == {"epoch": 1} and state


def test_fuzzed_checkpoint_never_loads_and_never_tracebacks(tmp_path):
    """400 truncation points (header included) and 200 single-bit flips: every one is a
    one-line UserError naming the file; none loads."""
    path = tmp_path / "epoch_001.pt"
    whole = model_file(path)
    rng = random.Random(0)
    cuts = sorted({round(i * (len(whole) - 1) / 399) for i in range(400)} | set(range(0, 120, 7)))
    reasons = collections.Counter()
    for cut in cuts:
        path.write_bytes(whole[:cut])
        reasons[refused(path).split(": ", 1)[1][:22]] += 1
    flips = [(rng.randrange(len(whole)), 1 << rng.randrange(8)) for _ in range(200)]
    for pos, bit in flips + [(0, 1), (30, 1), (90, 2)]:  # magic, digest and length in the header
        damaged = bytearray(whole)
        damaged[pos] ^= bit
        path.write_bytes(bytes(damaged))
        reasons[refused(path).split(": ", 1)[1][:22]] += 1
    assert set(reasons) <= {"checkpoint is empty (t", "checkpoint is corrupt ",
                            "not a checkpoint of th"}, reasons
    path.write_bytes(whole)
    assert checkpoints.load_model_file(path)[0] == tiny_cfg()


@pytest.mark.parametrize("content, expected", [
    (b"", "checkpoint is empty"),
    (bytes(range(256)) * 8, "not a checkpoint of this project"),
    # mtime=0: gzip's header would hold the time, and each xdist worker would collect another id
    (gzip.compress(b"weights" * 100, mtime=0), "not a checkpoint of this project"),
    (b"NMT-CHECKPOINT 1 sha256=12", "checkpoint is corrupt (its header line"),
    (checkpoints.frame(b"\x00" * 64), "refused to load: its payload is not weights"),
])
def test_garbage_gzip_and_empty_files_are_one_line(tmp_path, content, expected):
    path = tmp_path / "epoch_001.pt"
    path.write_bytes(content)
    assert expected in refused(path)


def test_legacy_torch_file_without_header_is_refused(tmp_path):
    path = tmp_path / "averaged.pt"
    torch.save({"format": checkpoints.FORMAT, "config": {}, "state_dict": {}, "info": {}}, path)
    assert "not a checkpoint of this project" in refused(path)


def test_foreign_config_key_wrong_shapes_and_missing_weights_are_one_line(tmp_path):
    cfg = tiny_cfg()
    state = Seq2SeqTransformer(cfg).state_dict()
    path = tmp_path / "averaged.pt"

    config = dataclasses.asdict(cfg) | {"d_modle": 16}
    checkpoints.save(path, {"format": checkpoints.FORMAT, "config": config,
                            "state_dict": state, "info": {}})
    assert "model config key 'd_modle' is unknown" in refused(path)

    bigger = dataclasses.replace(cfg, d_model=32, dim_feedforward=64)
    checkpoints.save_model(path, bigger, state)
    assert re.search(r"weight '[\w.]+' has shape \[\d+(, \d+)*\], the model's config gives",
                     refused(path))

    checkpoints.save_model(path, cfg, {k: v for k, v in state.items() if "decoder" not in k})
    assert "weights lack 'decoder." in refused(path)

    checkpoints.save_model(path, cfg, state | {"extra.weight": torch.zeros(2)})
    assert "weights have 'extra.weight', unknown to the model" in refused(path)

    checkpoints.save(path, {"format": "nmt-model-v0", "config": {}, "state_dict": {}})
    assert "not a model file of this project" in refused(path)


def test_state_from_another_code_version_is_one_line(tmp_path):
    """Same fingerprint, but a progress record this code's Progress does not have: an error
    naming the file and telling how to start fresh, not a TypeError traceback."""
    p = P.from_dict({"model": {"d_model": 16, "nhead": 2, "dim_feedforward": 32,
                               "num_encoder_layers": 1, "num_decoder_layers": 1},
                     "schedule": {"name": "constant"}, "train": {"amp": "fp32"}})
    p.validate()
    data = batches(2)
    state_dir = tmp_path / "state"
    t = Trainer(p, tiny_cfg(), data, data[:1], state_dir, "fp")
    t.save_state()
    state = checkpoints.load(state_dir / "state.pt")
    state["progress"]["renamed_field"] = 1
    checkpoints.save(state_dir / "state.pt", state)

    with pytest.raises(UserError) as err:
        Trainer(p, tiny_cfg(), data, data[:1], state_dir, "fp")
    message = str(err.value)
    assert message.startswith(f"{state_dir / 'state.pt'}: a training state this code cannot "
                              "restore (") and f"delete {state_dir}" in message
    assert "\n" not in message


def test_a_kill_between_save_and_checksum_cannot_happen(tmp_path, monkeypatch):
    """The file and its checksum are one rename: a save that dies before it leaves the old
    file whole and no new name at all."""
    path = tmp_path / "epoch_001.pt"
    whole = model_file(path)

    def dies(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", dies)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_model(path, tiny_cfg(), {})
    monkeypatch.undo()
    assert path.read_bytes() == whole and [p.name for p in tmp_path.iterdir()] == [path.name]


# --- real kill -9 while the training state is being written ---------------------------------

SAVER = """
import sys, torch
from pathlib import Path
from nmt import fsio, params as P
from nmt.batching import collate
from nmt.model import ModelConfig
from nmt.tokenizer import SpecialIds
from nmt.trainer import Trainer
p = P.from_dict({"model": {"d_model": 128, "nhead": 2, "dim_feedforward": 512,
                           "num_encoder_layers": 2, "num_decoder_layers": 2},
                 "schedule": {"name": "constant"}, "train": {"epochs": 1000, "amp": "fp32"}})
p.validate()
cfg = ModelConfig.from_params(p.model, 2000, 2000, True, 0)
data = [collate([([5, 6, 7], [7, 6, 5]), ([8, 9], [9, 8])], SpecialIds())]
state_dir = Path(sys.argv[1])
fsio.sweep_leftovers(state_dir)  # as the train stage does when it starts
t = Trainer(p, cfg, data, data, state_dir, "fp")
print("resumed", t.progress.step, flush=True)
while True:
    t.train_step(data)
    t.save_state()
    print("saved", t.progress.step, flush=True)
"""


@pytest.mark.e2e
def test_kill_9_while_saving_the_state_then_resume(tmp_path):
    """A real SIGKILL at random moments of a loop of training steps and state saves (a ~12 MB
    state, so many kills land inside a write): each restart resumes at the last save, or the one
    the kill interrupted after its rename; never an older state, a damaged file or a traceback.
    Runs until at least two kills landed mid-write (a '.tmp-' file was left)."""
    state_dir = tmp_path / "state"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    rng = random.Random(1)
    last_saved, mid_write, kills = 0, 0, 0
    while mid_write < 2:
        assert kills < 25, f"only {mid_write} of {kills} kills landed inside a write"
        out = tmp_path / f"run{kills}.log"
        with open(out, "w") as log:
            proc = subprocess.Popen([sys.executable, "-c", SAVER, str(state_dir)], env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
        while "saved" not in out.read_text():
            assert proc.poll() is None, out.read_text()[-3000:]
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        text = out.read_text()
        resumed = int(re.search(r"^resumed (\d+)$", text, re.M)[1])
        assert resumed in (last_saved, last_saved + 1) and "Traceback" not in text, text[-3000:]
        assert "older state" not in text and "starting fresh" not in text, text[-3000:]
        last_saved = int(re.findall(r"^saved (\d+)$", text, re.M)[-1])
        mid_write += any(p.name.startswith(".tmp-") for p in state_dir.iterdir())


def test_leftovers_of_a_kill_are_swept(tmp_path):
    out = tmp_path / "data/train"
    (out / "state/epochs").mkdir(parents=True)
    keep = [out / "state/state.pt", out / "metrics.json", tmp_path / "data/.tmp-model.x1"]
    for f in keep:
        f.write_bytes(b"x")
    junk = [out / "state/.tmp-state.pt.a1", out / "state/epochs/.tmp-epoch_003.pt.b2",
            tmp_path / "data/.tmp-train.c3", tmp_path / "data/.old-train.4"]
    for f in junk:
        f.write_bytes(b"half")
    (out / ".tmp-log.d5").mkdir()
    (out / ".tmp-log.d5/epochs.tsv").write_text("epoch\n")

    removed = fsio.sweep_leftovers(out)

    assert {str(p) for p in removed} >= {str(p) for p in junk} | {str(out / ".tmp-log.d5")}
    assert not any(p.exists() for p in junk) and not (out / ".tmp-log.d5").exists()
    assert all(f.exists() for f in keep)  # another output's temporary file is not ours


def test_renames_are_fsynced_in_their_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    fsio.write_text(tmp_path / "a/metrics.json", "{}\n")
    with fsio.atomic_dir(tmp_path / "b/log") as tmp:
        (tmp / "epochs.tsv").write_text("epoch\n")
    assert str(tmp_path / "a") in synced and str(tmp_path / "b") in synced


# --- other damaged intermediates --------------------------------------------------------------

@pytest.mark.parametrize("content, expected", [
    ("epoch\ttrain_loss\n1\t2.5\n2\tnan?\n", "line 3, column 'train_loss': 'nan?' is not a number"),
    ("epoch\ttrain_loss\n1\t2.5\n2\n", "line 3 does not have the header's 2 cells"),
    ("epoch\ttrain_loss\n1\t2.5\t7\n", "line 2 does not have the header's 2 cells"),
])
def test_damaged_epoch_log_is_one_line(tmp_path, content, expected):
    path = tmp_path / "epochs.tsv"
    path.write_text(content)
    with pytest.raises(UserError) as err:
        read_tsv(path)
    assert str(err.value).startswith(f"{path}: {expected}") and "\n" not in str(err.value)


def test_corrupt_sentencepiece_model_is_one_line(tmp_path):
    (tmp_path / "spm.model").write_bytes(b"\x0a\x05hello, not a model")
    with pytest.raises(UserError) as err:
        Tokenizers.load(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'spm.model'}: not a readable SentencePiece model")
    assert "\n" not in message


@pytest.mark.parametrize("stage, rel, cut", [
    ("swa_average", "data/train/metrics.json", 10),
    ("plots", "data/bleu/metrics.json", 5),
])
def test_truncated_metrics_json_is_one_line(tmp_path, stage, rel, cut):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    for name, text in (("data/train/metrics.json", '{"epochs": 1, "stopped_by": "epochs"}'),
                       ("data/bleu/metrics.json", '{"test": {"bleu": 1.0}}')):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text[:cut] if name == rel else text)
    (project / "data/train/log").mkdir()
    for name in ("epochs.tsv", "steps.tsv"):
        (project / "data/train/log" / name).write_text("epoch\tstep\tlr\ttrain_loss\tval_loss\n"
                                                       "1\t1\t0.1\t2.0\t2.0\n")

    line = the_error_line(run_stage(project, stage))

    assert line.startswith(f"error: {rel}: damaged, not valid JSON (")


# --- a NaN loss ------------------------------------------------------------------------------

def batches(n: int) -> list:
    rng = random.Random(0)
    out = []
    for _ in range(n):
        pairs = []
        for _ in range(6):
            s = [rng.randrange(4, V) for _ in range(rng.randint(2, 8))]
            pairs.append((s, s[::-1]))
        out.append(collate(pairs, SpecialIds()))
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


# --- one home each: the checkpoint folder's names, a file's sha256 ------------------------------

def test_checkpoint_names_and_file_hashing_live_in_one_place_each(tmp_path):
    """epoch_NNN.pt is spelled only in nmt/checkpoints.py, and a file's sha256 is computed only
    by nmt.fsio.sha256_file; other modules call them."""
    epoch_name = re.compile(r"""["']epoch_[{\\(*]""")
    file_hash = re.compile(r"def \w*sha256\w*\(")
    spelled, hashed = [], []
    for path in sorted(p for d in ("nmt", "stages", "nmtlab") for p in (REPO / d).rglob("*.py")):
        text, rel = path.read_text(encoding="utf-8"), str(path.relative_to(REPO))
        if epoch_name.search(text) and rel != "nmt/checkpoints.py":
            spelled.append(rel)
        if file_hash.search(text) and rel != "nmt/fsio.py":
            hashed.append(rel)
    assert spelled == [] and hashed == [], (spelled, hashed)

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("epoch_010.pt", "epoch_002.pt", ".tmp-epoch_003.pt.x1", "epoch_004.pt.sha256",
                 "notes.txt"):
        (folder / name).write_bytes(b"")
    assert checkpoints.list_epochs(folder) == [2, 10]
    assert checkpoints.epoch_path(folder, 7) == folder / "epoch_007.pt"
