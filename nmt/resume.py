"""The resume state: what a run saves so that it can continue, and when it may.

The full state (weights, optimizer, schedule, every rank's RNGs, the position in
the epoch's batch order and the logs so far, `Progress`) is saved atomically at
the end of each epoch, every `train.save_every_steps` optimizer steps and at a
budget stop, in data/train/state: a folder DVC neither deletes before the
stage runs nor caches (it is no declared output). The state before the newest
is kept too, so a corrupt newest file falls back to it. Each epoch's weights
wait in state/epochs until the stage publishes them.

A rerun continues only from a state whose fingerprint matches: params, data,
the train stage's code (the Python files dvc.yaml lists as its deps) and the
torch version. Anything else starts fresh and says so, so a finished state is
never republished after a change that would have changed the weights.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml

from . import checkpoints, fsio
from .errors import UserError
from .model import ModelConfig
from .params import Params, Train

log = logging.getLogger("nmt.train")

STATE_FILE = "state.pt"
PREV_STATE_FILE = "state.prev.pt"
EPOCH_DIR = "epochs"
CODE_HASH_LENGTH = 12  # hex digits of code_hash, as short as a git commit's is shown


@dataclass
class Progress:
    """Plain-Python progress of a run: everything but tensors, saved with the state."""

    fingerprint: str = ""
    epoch: int = 1  # the epoch being trained (1-based)
    batch_pos: int = 0  # batches of this epoch's order already done
    step: int = 0  # optimizer steps done
    train_seconds: float = 0.0  # time in training steps (not validation)
    wall_seconds: float = 0.0  # all time in the stage's loop, validation included
    val_bleu_seconds: float = 0.0  # of which greedy validation BLEU (train.val_bleu)
    tokens_seen: int = 0  # real target tokens trained on
    epoch_nll: float = 0.0  # running sums of the current epoch
    epoch_tokens: int = 0
    epoch_seconds: float = 0.0
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_by: str = ""  # epochs | early_stopping | budget
    epoch_rows: list[dict] = field(default_factory=list)
    step_rows: list[dict] = field(default_factory=list)
    kept_epochs: list[int] = field(default_factory=list)
    # The row of the epoch a budget stop cut short, validated where it stopped: published
    # with its weights, but no part of the history a continued run builds on.
    stopped_row: dict = field(default_factory=dict)

    def published_rows(self) -> list[dict]:
        """The epoch log's rows: the finished epochs, then the one a budget stop cut short."""
        return self.epoch_rows + ([self.stopped_row] if self.stopped_row else [])

    def published_epochs(self, keep: int, keep_best: int = 0) -> list[int]:
        """The last `keep` epochs with weights, a budget-stopped epoch included, and the
        `keep_best` best by validation loss."""
        epochs = self.kept_epochs + ([self.epoch] if self.stopped_row else [])
        return sorted(set(epochs[-keep:]) | set(self.best_epochs(keep_best)) & set(epochs))

    def best_epochs(self, n: int) -> list[int]:
        """The n finished epochs with the lowest validation loss (a tie: the later one), as
        swa-average ranks them for swa.best_by: val_loss."""
        rows = sorted(self.epoch_rows, key=lambda r: (r["val_loss"], -r["epoch"]))
        return [int(r["epoch"]) for r in rows[:n]]


# ---- when a state may be reused ------------------------------------------------------------
def fingerprint(params: Params, data_files: list[Path], code_files: list[Path]) -> str:
    """Hash of everything that shapes the trained weights: params, data, the code that
    trains and the torch version. Resume needs an exact match, so a finished state is
    never republished after an edit to the training code."""
    train = dataclasses.asdict(params.train)
    for key in ("budget_minutes", "save_every_steps", "keep_checkpoints", "keep_best"):
        train.pop(key)  # how long/often we save, not what we compute
    blob = {"seed": params.seed, "model": params.group("model"), "loss": params.group("loss"),
            "optim": params.group("optim"), "schedule": params.group("schedule"), "train": train,
            "data": [fsio.sha256_file(p) for p in data_files],
            "code": _code_digests(code_files),
            "torch": torch.__version__}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def code_hash(code_files: list[Path]) -> str:
    """A short hash of the training code: the files `fingerprint` hashes, by path and
    content (metrics.json `code`, so a run's figures name the code that made them)."""
    blob = json.dumps(_code_digests(code_files), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:CODE_HASH_LENGTH]


def _code_digests(code_files: list[Path]) -> dict[str, str]:
    return {str(p): fsio.sha256_file(p) for p in code_files}


def stage_code_files(stage: str, dvc_yaml: Path = Path("dvc.yaml")) -> list[Path]:
    """The Python files dvc.yaml lists as `stage`'s deps: the code DVC reruns it for."""
    try:
        deps = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"][stage]["deps"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise UserError(f"{dvc_yaml}: cannot read the {stage} stage's deps ({e})") from None
    return [Path(d) for d in deps if str(d).endswith(".py")]


def pruned_but_wanted(progress: Progress, train: Train) -> list[int]:
    """Epochs whose weights the saved run deleted (it kept fewer: train.keep_checkpoints
    was raised since) but which this run's last keep_checkpoints epochs include."""
    keep, done = train.keep_checkpoints, progress.epoch - 1
    if progress.stopped_by in ("epochs", "early_stopping"):
        first = done - keep + 1
    elif train.early_stopping_patience:
        first = 1  # the run may yet stop at any epoch
    else:
        first = train.epochs - keep + 1
    wanted = set(range(max(first, 1), done + 1)) | set(progress.best_epochs(train.keep_best))
    return sorted(e for e in wanted if e not in progress.kept_epochs)


# ---- reading and writing -----------------------------------------------------------------
def load(state_dir: Path, fp: str) -> tuple[Path, dict] | None:
    """The newest readable state in `state_dir` (path, contents) if it was made with
    fingerprint `fp`; else None, and the folder is cleared for a fresh start."""
    for name in (STATE_FILE, PREV_STATE_FILE):
        path = state_dir / name
        if not path.exists():
            continue
        try:
            state = checkpoints.load(path)
        except UserError as e:
            log.warning("%s; trying an older state", e)
            continue
        progress = state.get("progress") if isinstance(state, dict) else None
        if not isinstance(progress, dict) or progress.get("fingerprint") != fp:
            log.info("saved training state in %s was made with other params, data or "
                     "code: starting fresh", state_dir)
            break
        return path, state
    clear(state_dir)
    return None


@contextlib.contextmanager
def restoring(path: Path, state_dir: Path) -> Iterator[None]:
    """Loading a state's parts into this code's objects: a mismatch is one error line."""
    try:
        yield
    except (TypeError, KeyError, ValueError, RuntimeError, AttributeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()[:160]
        raise UserError(f"{path}: a training state this code cannot restore ({reason}); "
                        f"delete {state_dir} to start fresh") from None


def save(state_dir: Path, progress: Progress, model: torch.nn.Module,
         optimizer: torch.optim.Optimizer, schedule_state: dict,
         rng: list[dict[str, Any]]) -> None:
    """The resume state; `rng`: each rank's `rng_state()`, in rank order."""
    path = state_dir / STATE_FILE
    if path.exists():  # the last good state becomes prev; state.pt exists at every moment
        with fsio.atomic_path(state_dir / PREV_STATE_FILE) as tmp:
            tmp.unlink()
            try:
                os.link(path, tmp)  # no copy of the bytes where the filesystem has hard links
            except OSError:
                shutil.copyfile(path, tmp)
    checkpoints.save(path, {
        "progress": dataclasses.asdict(progress),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule_state,
        "rng": rng,
    })


def save_epoch_weights(state_dir: Path, progress: Progress, cfg: ModelConfig,
                       model: torch.nn.Module, keep: int, keep_best: int = 0) -> None:
    """This epoch's weights; only the last `keep` epochs' and the `keep_best` best by
    validation loss stay kept (progress.kept_epochs)."""
    epoch_dir = state_dir / EPOCH_DIR
    checkpoints.save_model(checkpoints.epoch_path(epoch_dir, progress.epoch), cfg,
                           model.state_dict(), {"epoch": progress.epoch})
    kept = [e for e in progress.kept_epochs if e != progress.epoch] + [progress.epoch]
    wanted = set(kept[-keep:]) | set(progress.best_epochs(keep_best))
    for old in kept:
        if old not in wanted:
            checkpoints.remove_epoch(epoch_dir, old)
    progress.kept_epochs = [e for e in kept if e in wanted]


def save_stopped_weights(state_dir: Path, progress: Progress, cfg: ModelConfig,
                         model: torch.nn.Module) -> None:
    """The weights where a budget stopped the epoch; the epoch's real end overwrites them."""
    checkpoints.save_model(checkpoints.epoch_path(state_dir / EPOCH_DIR, progress.epoch), cfg,
                           model.state_dict(), {"epoch": progress.epoch})


def clear(state_dir: Path) -> None:
    shutil.rmtree(state_dir, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    """This process's RNG states as plain types and tensors, loadable with
    weights_only=True (on CUDA, its current device's: each rank has its own GPU)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(states: list[dict[str, Any]], rank: int) -> None:
    """Rank `rank`'s RNG states from a saved state's list (one per rank)."""
    if len(states) <= rank:
        raise ValueError(f"random states of {len(states)} rank(s) saved, none for rank {rank}")
    state = states[rank]
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
