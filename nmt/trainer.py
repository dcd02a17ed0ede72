"""The training loop, top to bottom, with resumable state.

One optimizer step sums the gradients of `accum_steps` batches, each loss
divided by the real target tokens of the whole window, so k batches of b
tokens give the same update as one batch of k*b tokens.

Resume: the full state (weights, optimizer, schedule, RNGs, position in the
epoch's batch order, logs so far) is saved atomically at the end of each epoch
and every `save_every_steps` optimizer steps, in data/train/state: a folder
DVC neither deletes before the stage runs nor caches (it is no declared output). A rerun with the same params and data continues from
it; with other params it starts fresh and says so. The state before the
newest is kept too, so a corrupt newest file falls back to it.

There is no gradient scaler to save: mixed precision is bf16, whose exponent
range is fp32's, so gradients do not underflow and need no loss scaling (fp16,
which would, is not offered).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from . import checkpoints, device as devices, fsio
from .batching import Batch, epoch_order
from .errors import UserError
from .loss import linear_cross_entropy
from .model import ModelConfig, Seq2SeqTransformer, count_parameters
from .optim import build_optimizer, phase_for_epoch
from .params import Params
from .schedules import LearningRate

log = logging.getLogger("nmt.train")

STATE_FILE = "state.pt"
PREV_STATE_FILE = "state.prev.pt"
EPOCH_DIR = "epochs"


@dataclass
class Progress:
    """Plain-Python progress of a run: everything but tensors, saved with the state."""

    fingerprint: str = ""
    epoch: int = 1  # the epoch being trained (1-based)
    batch_pos: int = 0  # batches of this epoch's order already done
    step: int = 0  # optimizer steps done
    phase: str = "main"  # optimizer phase: main, or sgd after optim.sgd_from_epoch
    train_seconds: float = 0.0  # time in training steps (not validation)
    wall_seconds: float = 0.0  # all time in the stage's loop, validation included
    tokens_seen: int = 0  # real target tokens trained on
    epoch_nll: float = 0.0  # running sums of the current epoch
    epoch_tokens: int = 0
    epoch_seconds: float = 0.0
    best_val_loss: float = math.inf
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

    def published_epochs(self, keep: int) -> list[int]:
        """The last `keep` epochs with weights, a budget-stopped epoch included."""
        return (self.kept_epochs + ([self.epoch] if self.stopped_row else []))[-keep:]


class NonFiniteLoss(UserError):
    pass


def fingerprint(params: Params, data_files: list[Path], code_files: list[Path]) -> str:
    """Hash of everything that shapes the trained weights: params, data, the code that
    trains and the torch version. Resume needs an exact match, so a finished state is
    never republished after an edit to the training code."""
    train = dataclasses.asdict(params.train)
    for key in ("budget_minutes", "save_every_steps", "keep_checkpoints"):
        train.pop(key)  # how long/often we save, not what we compute
    blob = {"seed": params.seed, "model": params.group("model"), "loss": params.group("loss"),
            "optim": params.group("optim"), "schedule": params.group("schedule"), "train": train,
            "data": [fsio.sha256_file(p) for p in data_files],
            "code": {str(p): fsio.sha256_file(p) for p in code_files},
            "torch": torch.__version__}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def stage_code_files(stage: str, dvc_yaml: Path = Path("dvc.yaml")) -> list[Path]:
    """The Python files dvc.yaml lists as `stage`'s deps: the code DVC reruns it for."""
    try:
        deps = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"][stage]["deps"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise UserError(f"{dvc_yaml}: cannot read the {stage} stage's deps ({e})") from None
    return [Path(d) for d in deps if str(d).endswith(".py")]


class Trainer:
    def __init__(self, params: Params, cfg: ModelConfig, train_batches: list[Batch],
                 val_batches: list[Batch], state_dir: Path, fp: str):
        self.p = params
        self.cfg = cfg
        self.train_batches = train_batches
        self.val_batches = val_batches
        self.state_dir = state_dir
        self.device = devices.pick(params.train.device)
        self.bf16 = devices.use_bf16(params.train.amp, self.device)
        self.steps_per_epoch = math.ceil(len(train_batches) / params.train.accum_steps)
        self.total_steps = self.steps_per_epoch * params.train.epochs
        self.lr = LearningRate(params.schedule, params.optim, self.total_steps, self.steps_per_epoch)

        seed_everything(params.seed)
        self.model = Seq2SeqTransformer(cfg).to(self.device)
        self.features = self.model.features
        if params.train.compile:
            if self.device.type == "cpu":
                if not (shutil.which("c++") or shutil.which("g++")):
                    raise UserError("train.compile: torch.compile on the CPU needs a C++ "
                                    "compiler (c++ or g++) on PATH; set train.compile: false")
                log.warning("train.compile on the CPU: on a 2-core Xeon it compiled for "
                            "about 2 minutes and then ran slower than eager (README, Speed)")
            self.features = torch.compile(self.model.features, dynamic=True)
        self.progress = Progress(fingerprint=fp)
        self.optimizer = build_optimizer(params.optim, self.model, "main")
        self._resume()

    # ---- state ---------------------------------------------------------------------------
    def _resume(self) -> None:
        for name in (STATE_FILE, PREV_STATE_FILE):
            path = self.state_dir / name
            if not path.exists():
                continue
            try:
                state = checkpoints.load(path)
            except UserError as e:
                log.warning("%s; trying an older state", e)
                continue
            progress = state.get("progress") if isinstance(state, dict) else None
            if not isinstance(progress, dict) or progress.get("fingerprint") != self.progress.fingerprint:
                log.info("saved training state in %s was made with other params, data or "
                         "code: starting fresh", self.state_dir)
                shutil.rmtree(self.state_dir, ignore_errors=True)
                return
            fp = self.progress.fingerprint
            try:
                self.progress = Progress(**progress)
                if missing := self._pruned_but_wanted():
                    log.info("train.keep_checkpoints is now %d, but the saved run deleted the "
                             "weights of epoch %s: retraining from scratch to keep them",
                             self.p.train.keep_checkpoints, ", ".join(map(str, missing)))
                    self.progress = Progress(fingerprint=fp)
                    shutil.rmtree(self.state_dir, ignore_errors=True)
                    return
                self.model.load_state_dict(state["model"])
                self.optimizer = build_optimizer(self.p.optim, self.model, self.progress.phase)
                self.optimizer.load_state_dict(state["optimizer"])
                self.lr.load_state_dict(state["schedule"])
                restore_rng(state["rng"])
            except (TypeError, KeyError, ValueError, RuntimeError, AttributeError) as e:
                reason = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()[:160]
                raise UserError(f"{path}: a training state this code cannot restore ({reason}); "
                                f"delete {self.state_dir} to start fresh") from None
            log.info("resuming from %s: epoch %d, batch %d, step %d", path,
                     self.progress.epoch, self.progress.batch_pos, self.progress.step)
            return
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def _pruned_but_wanted(self) -> list[int]:
        """Epochs whose weights the saved run deleted (it kept fewer, train.keep_checkpoints
        was raised since) but which the last keep_checkpoints epochs of this run include."""
        pr, keep = self.progress, self.p.train.keep_checkpoints
        done = pr.epoch - 1
        if pr.stopped_by in ("epochs", "early_stopping"):
            first = done - keep + 1
        elif self.p.train.early_stopping_patience:
            first = 1  # the run may yet stop at any epoch
        else:
            first = self.p.train.epochs - keep + 1
        return [e for e in range(max(first, 1), done + 1) if e not in pr.kept_epochs]

    def save_state(self) -> None:
        path = self.state_dir / STATE_FILE
        if path.exists():  # keep the last good state until the new one is whole
            path.replace(self.state_dir / PREV_STATE_FILE)
        checkpoints.save(path, {
            "progress": dataclasses.asdict(self.progress),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.lr.state_dict(),
            "rng": rng_state(),
        })

    def _save_epoch_weights(self, epoch: int) -> None:
        epoch_dir = self.state_dir / EPOCH_DIR
        checkpoints.save_model(checkpoints.epoch_path(epoch_dir, epoch), self.cfg,
                               self.model.state_dict(), {"epoch": epoch})
        kept = [e for e in self.progress.kept_epochs if e != epoch] + [epoch]
        for old in kept[:-self.p.train.keep_checkpoints]:
            checkpoints.remove_epoch(epoch_dir, old)
        self.progress.kept_epochs = kept[-self.p.train.keep_checkpoints:]

    # ---- the loop ------------------------------------------------------------------------
    def loss_on(self, batch: Batch, epsilon: float) -> tuple[torch.Tensor, float]:
        """(label-smoothed loss summed over tokens, summed NLL) of one batch: the forward pass."""
        b = batch.to(self.device)
        with devices.autocast(self.device, self.bf16):
            hidden = self.features(b.src, b.tgt_in)
        loss_sum, nll_sum = linear_cross_entropy(
            hidden, self.model.out_proj.weight, b.tgt_out, epsilon, self.cfg.pad_id,
            dtype=torch.bfloat16 if self.bf16 else torch.float32)
        return loss_sum, float(nll_sum)

    def train_step(self, window: list[Batch]) -> float:
        """One optimizer step over a window of batches; returns the mean NLL per token."""
        tokens = sum(b.n_tgt_tokens for b in window)
        lr = self.lr(self.progress.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        nll = 0.0
        for batch in window:
            loss_sum, nll_sum = self.loss_on(batch, self.p.loss.label_smoothing)
            (loss_sum / tokens).backward()
            nll += nll_sum
        if not math.isfinite(nll):
            raise NonFiniteLoss(
                f"train: loss is {nll} at step {self.progress.step + 1} (epoch "
                f"{self.progress.epoch}); stopped, the last good state is kept in {self.state_dir} "
                f"(try a lower optim.lr or train.grad_clip > 0)")
        if self.p.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.p.train.grad_clip)
        self.optimizer.step()
        self.progress.step += 1
        self.progress.tokens_seen += tokens
        self.progress.step_rows.append({"step": self.progress.step, "lr": lr,
                                        "train_loss": round(nll / tokens, 5)})
        return nll / tokens

    @torch.no_grad()
    def evaluate(self) -> float:
        """Validation cross-entropy per target token (never label-smoothed, so runs compare)."""
        self.model.eval()
        nll = tokens = 0
        for batch in self.val_batches:
            nll += self.loss_on(batch, 0.0)[1]
            tokens += batch.n_tgt_tokens
        self.model.train()
        return nll / max(tokens, 1)

    def run(self) -> Progress:
        p, pr = self.p, self.progress
        budget = p.train.budget_minutes * 60
        log.info("training %d parameters on %s (%s, bf16 %s): %d batches/epoch, %d steps/epoch, "
                 "%d epochs", count_parameters(self.model), self.device,
                 devices.describe(self.device), "on" if self.bf16 else "off",
                 len(self.train_batches), self.steps_per_epoch, p.train.epochs)
        if pr.stopped_by == "budget" and (not budget or pr.wall_seconds < budget):
            log.info("continuing a run its time budget stopped (train.budget_minutes raised)")
            pr.stopped_by, pr.stopped_row = "", {}
        if pr.stopped_by:
            return pr
        self.model.train()
        while pr.epoch <= p.train.epochs:
            epoch = pr.epoch
            phase = phase_for_epoch(p.optim, epoch)
            if phase != pr.phase:
                log.info("epoch %d: switching the optimizer to %s", epoch, phase)
                self.optimizer = build_optimizer(p.optim, self.model, phase)
                pr.phase = phase
            order = epoch_order(len(self.train_batches), p.seed, epoch)
            bar = tqdm(total=len(order), initial=pr.batch_pos, desc=f"epoch {epoch}",
                       unit="batch", leave=False, dynamic_ncols=True)
            while pr.batch_pos < len(order):
                t0 = time.perf_counter()
                window_ids = order[pr.batch_pos:pr.batch_pos + p.train.accum_steps]
                window = [self.train_batches[i] for i in window_ids]
                loss = self.train_step(window)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                n_tok = sum(b.n_tgt_tokens for b in window)
                pr.batch_pos += len(window)
                pr.epoch_nll += loss * n_tok
                pr.epoch_tokens += n_tok
                pr.epoch_seconds += dt
                pr.train_seconds += dt
                pr.wall_seconds += dt
                bar.update(len(window))
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{self.lr(pr.step):.2e}",
                                tok_s=f"{pr.epoch_tokens / max(pr.epoch_seconds, 1e-9):.0f}")
                if budget and pr.wall_seconds >= budget:
                    pr.stopped_by = "budget"
                    log.info("train.budget_minutes (%.1f) reached at step %d: stopping",
                             p.train.budget_minutes, pr.step)
                    break
                if p.train.save_every_steps and pr.step % p.train.save_every_steps == 0:
                    self.save_state()
            bar.close()
            if pr.batch_pos < len(order):  # the budget stopped it mid-epoch
                self._stop_mid_epoch()
                return pr
            self._end_epoch()
            if pr.stopped_by:
                break
        if not pr.stopped_by:
            pr.stopped_by = "epochs"
        self.save_state()
        return pr

    def _stop_mid_epoch(self) -> None:
        """Validate and keep the weights where the budget stopped, and save the state at
        that batch: a continued run (budget raised) trains the rest of this epoch."""
        pr = self.progress
        pr.stopped_row = self._epoch_row(self._validate())
        log.info("epoch %d stopped after %d of %d batches: val loss %.4f", pr.epoch,
                 pr.batch_pos, len(self.train_batches), pr.stopped_row["val_loss"])
        checkpoints.save_model(checkpoints.epoch_path(self.state_dir / EPOCH_DIR, pr.epoch),
                               self.cfg, self.model.state_dict(), {"epoch": pr.epoch})
        self.save_state()

    def _validate(self) -> float:
        t0 = time.perf_counter()
        val_loss = self.evaluate()
        self.progress.wall_seconds += time.perf_counter() - t0
        return val_loss

    def _epoch_row(self, val_loss: float) -> dict:
        """This epoch's log row: its training so far and the validation loss."""
        pr = self.progress
        return {
            "epoch": pr.epoch,
            "train_loss": round(pr.epoch_nll / max(pr.epoch_tokens, 1), 5),
            "val_loss": round(val_loss, 5),
            "val_ppl": round(math.exp(min(val_loss, 50.0)), 3),
            "lr": self.lr(max(pr.step - 1, 0)),
            "seconds": round(pr.epoch_seconds, 2),
            "tokens_per_s": round(pr.epoch_tokens / max(pr.epoch_seconds, 1e-9), 1),
        }

    def _end_epoch(self) -> None:
        p, pr = self.p, self.progress
        val_loss = self._validate()
        row = self._epoch_row(val_loss)
        pr.epoch_rows.append(row)
        log.info("epoch %d: train loss %.4f, val loss %.4f, lr %.2e, %.0f s, %.0f tokens/s",
                 pr.epoch, row["train_loss"], row["val_loss"], row["lr"], row["seconds"],
                 row["tokens_per_s"])
        if self.lr.end_epoch(pr.epoch, val_loss):
            log.info("plateau guard: validation loss stalled, lr scaled down")
        if val_loss < pr.best_val_loss:
            pr.best_val_loss, pr.best_epoch, pr.bad_epochs = val_loss, pr.epoch, 0
        else:
            pr.bad_epochs += 1
        self._save_epoch_weights(pr.epoch)
        patience = p.train.early_stopping_patience
        if patience and pr.bad_epochs >= patience and not pr.stopped_by:
            pr.stopped_by = "early_stopping"
            log.info("early stopping: no better validation loss for %d epochs", patience)
        pr.epoch += 1
        pr.batch_pos = 0
        pr.epoch_nll = pr.epoch_seconds = 0.0
        pr.epoch_tokens = 0
        self.save_state()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """RNG states as plain types and tensors, loadable with weights_only=True."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def publish(trainer: Trainer, checkpoints_dir: Path, log_dir: Path,
            metrics_path: Path) -> dict[str, Any]:
    """Write the stage's outputs from the final state: kept weights, logs, metrics."""
    pr = trainer.progress
    with fsio.atomic_dir(checkpoints_dir) as tmp:
        checkpoints.copy_epochs(trainer.state_dir / EPOCH_DIR, tmp,
                                pr.published_epochs(trainer.p.train.keep_checkpoints))
    rows = pr.published_rows()
    write_logs(rows, pr.step_rows, log_dir)
    best_val_loss, best_epoch = pr.best_val_loss, pr.best_epoch
    if pr.stopped_row and pr.stopped_row["val_loss"] < best_val_loss:
        best_val_loss, best_epoch = pr.stopped_row["val_loss"], pr.stopped_row["epoch"]
    dev = trainer.device
    hours = pr.wall_seconds / 3600
    metrics = {
        "epochs": len(rows),
        "steps": pr.step,
        "best_val_loss": round(best_val_loss, 5),
        "best_epoch": best_epoch,
        "final_val_loss": rows[-1]["val_loss"] if rows else None,
        "stopped_by": pr.stopped_by,
        "train_minutes": round(pr.wall_seconds / 60, 2),
        "wall_seconds": round(pr.wall_seconds, 1),
        "tokens_seen": pr.tokens_seen,
        "tokens_per_s": round(pr.tokens_seen / max(pr.train_seconds, 1e-9), 1),
        "peak_memory_mb": round(devices.peak_memory_mb(dev), 1),
        "device": devices.describe(dev),
        ("gpu_hours" if dev.type == "cuda" else "cpu_hours"):
            round(hours * (1 if dev.type == "cuda" else torch.get_num_threads()), 6),
        "parameters": count_parameters(trainer.model),
        "bf16": trainer.bf16,
    }
    fsio.write_json(metrics_path, metrics)
    return metrics


def write_logs(epoch_rows: list[dict], step_rows: list[dict], log_dir: Path) -> None:
    with fsio.atomic_dir(log_dir) as tmp:
        fsio.write_text(tmp / "epochs.tsv", tsv(epoch_rows, ["epoch", "train_loss", "val_loss",
                                                             "val_ppl", "lr", "seconds",
                                                             "tokens_per_s"]))
        fsio.write_text(tmp / "steps.tsv", tsv(step_rows, ["step", "lr", "train_loss"]))


def tsv(rows: list[dict], columns: list[str]) -> str:
    lines = ["\t".join(columns)]
    lines += ["\t".join(str(r[c]) for c in columns) for r in rows]
    return "\n".join(lines) + "\n"
