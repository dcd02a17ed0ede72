"""The training loop, top to bottom, with resumable state.

One optimizer step sums the gradients of `accum_steps` batches, each loss
divided by the real target tokens of the whole window, so k batches of b
tokens give the same update as one batch of k*b tokens.

Every forward pass, training and validation, is the model's own forward given the
targets (`Seq2SeqTransformer.forward`), called through `self.forward`: the model
itself, wrapped by DistributedDataParallel on several ranks, or compiled. Validation
has no gradients to average: each rank validates its share of the batches through
`self.local_forward` (the model, compiled or not, never DDP), and the sums are added
up over the ranks; rank 0 takes the decisions that follow and every rank takes them
(nmt/distributed.py).

The loop saves its resume state (nmt/resume.py) at the end of each epoch,
every `train.save_every_steps` optimizer steps and where a budget stops it;
the stage then writes its outputs from that state and `Trainer.metrics()`
(nmt/publish.py).

There is no gradient scaler to save: mixed precision is bf16, whose exponent
range is fp32's, so gradients do not underflow and need no loss scaling (fp16,
which would, is not offered).
"""
from __future__ import annotations

import logging
import math
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from . import checkpoints, device as devices, distributed, resume
from .batching import Batch, epoch_order
from .errors import UserError
from .model import ModelConfig, Seq2SeqTransformer, count_parameters
from .optim import build_optimizer
from .params import Params
from .phases import Phases
from .resume import Progress
from .schedules import LearningRate
from .trainlog import LiveLog

log = logging.getLogger("nmt.train")


class NonFiniteLoss(UserError):
    pass


class Trainer:
    def __init__(self, params: Params, cfg: ModelConfig, train_batches: Sequence[Batch],
                 val_batches: Sequence[Batch], state_dir: Path, fp: str, *,
                 device: torch.device = torch.device("cpu"), live: LiveLog | None = None,
                 val_bleu: Callable[[torch.nn.Module], float] | None = None, code: str = ""):
        """`fp`: the resume fingerprint (resume.fingerprint); `device`: where to train, as
        the stage picked it from train.device; `live`: where each step's and epoch's row
        goes as it is made (nmt/trainlog.py); `val_bleu`: the model's validation BLEU,
        logged at each epoch end when given (train.val_bleu), on the main process only;
        `code`: the short hash of the training code (resume.code_hash), for the metrics."""
        self.p = params
        self.cfg = cfg
        self.train_batches = train_batches
        self.val_batches = val_batches
        self.state_dir = state_dir
        self.device = device
        self.live = live if distributed.is_main() else None
        self.val_bleu = val_bleu if distributed.is_main() else None
        self.bf16 = devices.use_bf16(params.train.amp, self.device)
        # A step's window: accum_steps batches on each rank (nmt/distributed.py).
        self.batches_per_step = params.train.accum_steps * distributed.world_size()
        self.steps_per_epoch = math.ceil(len(train_batches) / self.batches_per_step)
        self.total_steps = self.steps_per_epoch * params.train.epochs
        self.lr = LearningRate(params.schedule, params.optim, self.total_steps, self.steps_per_epoch)
        self.phases = Phases.from_params(params.optim)
        self.code = code

        seed_everything(params.seed)
        self.model = Seq2SeqTransformer(cfg).to(self.device)
        if params.train.init_from:  # a fresh optimizer and schedule over these weights
            self.model.load_state_dict(checkpoints.load_init(params.train.init_from, cfg))
        distributed.seed_rank(params.seed)  # ranks > 0: their own dropout masks
        self.progress = Progress(fingerprint=fp)
        self.optimizer = build_optimizer(params.optim, self.model, self.phases.held_after(1, 0))
        self._resume()
        self.ddp = distributed.wrap(self.model, self.device)  # after the resume: its weights
        # What the loop calls, compiled where train.compile asks: for training the model, or
        # DDP around it; for validation (each rank its own share, no gradients to average)
        # the model itself.
        if params.train.compile:
            check_compiler(self.device)
        self.local_forward = compiled(self.model, params.train.compile)
        self.forward = self.local_forward if self.ddp is None else \
            compiled(self.ddp, params.train.compile)

    # ---- state ---------------------------------------------------------------------------
    def _resume(self) -> None:
        # Rank 0 reads the state and sends it to the others, whose machines may not have it.
        found = distributed.from_main(
            resume.load(self.state_dir, self.progress.fingerprint) if distributed.is_main()
            else None, self.device)
        if found is None:
            return
        path, state = found
        with resume.restoring(path, self.state_dir):
            progress = Progress(**state["progress"])
            if missing := resume.pruned_but_wanted(progress, self.p.train):
                log.info("train.keep_checkpoints is now %d, but the saved run deleted the "
                         "weights of epoch %s: retraining from scratch to keep them",
                         self.p.train.keep_checkpoints, ", ".join(map(str, missing)))
                resume.clear(self.state_dir)
                return
            self.model.load_state_dict(state["model"])
            held = self.phases.held_after(progress.epoch, progress.batch_pos)
            self.optimizer = build_optimizer(self.p.optim, self.model, held)
            self.optimizer.load_state_dict(state["optimizer"])
            self.lr.load_state_dict(state["schedule"])
            resume.restore_rng(state["rng"], distributed.rank())
        self.progress = progress
        log.info("resuming from %s: epoch %d, batch %d, step %d", path,
                 progress.epoch, progress.batch_pos, progress.step)

    def save_state(self) -> None:
        """Every rank calls it (each sends rank 0 its random state); rank 0 writes."""
        rng = distributed.gather(resume.rng_state())
        if not distributed.is_main():
            return
        resume.save(self.state_dir, self.progress, self.model, self.optimizer,
                    self.lr.state_dict(), rng)

    # ---- the loop ------------------------------------------------------------------------
    def loss_on(self, batch: Batch, epsilon: float) -> tuple[torch.Tensor, float]:
        """(label-smoothed loss summed over tokens, summed NLL) of one batch: the model's
        forward given the targets, under autocast where the run trains in bf16. Without
        gradients (validation) it bypasses DDP: no rank waits for another there."""
        b = batch.to(self.device)
        forward = self.forward if torch.is_grad_enabled() else self.local_forward
        with devices.autocast(self.device, self.bf16):
            loss_sum, nll_sum = forward(b.src, b.tgt_in, b.tgt_out, label_smoothing=epsilon)
        return loss_sum, float(nll_sum)

    def train_step(self, window: list[Batch]) -> float:
        """One optimizer step over a window of batches; returns the mean NLL per token."""
        tokens = sum(b.n_tgt_tokens for b in window)
        lr = self.lr(self.progress.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        nll = 0.0
        mine, weight = distributed.shard(window), distributed.share_weight(window)
        for i, batch in enumerate(mine):
            with distributed.accumulating(self.ddp, last=i == len(mine) - 1):
                loss_sum, nll_sum = self.loss_on(batch, self.p.loss.label_smoothing)
                (loss_sum / tokens * weight).backward()
            if weight:  # a stand-in batch's loss is no part of the window's
                nll += nll_sum
        nll = distributed.total(nll, self.device)
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
        """Validation cross-entropy per target token (never label-smoothed, so runs compare).
        Each rank validates its share of the batches; the sums are added up over ranks."""
        self.model.eval()
        nll = tokens = 0
        for batch in distributed.rank_share(self.val_batches):
            nll += self.loss_on(batch, 0.0)[1]
            tokens += batch.n_tgt_tokens
        self.model.train()
        nll, tokens = distributed.totals([nll, tokens], self.device)
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
        if self.live:
            self.live.start(pr.epoch_rows, pr.step_rows)
        try:
            self._train()
        finally:
            if self.live:
                self.live.close()
        return pr

    def _train(self) -> None:
        p, pr = self.p, self.progress
        self.model.train()
        while pr.epoch <= p.train.epochs:
            phase = self.phases.of_epoch(pr.epoch)
            if phase != self.phases.held_after(pr.epoch, pr.batch_pos):
                log.info("epoch %d: switching the optimizer to %s", pr.epoch, phase)
                self.optimizer = build_optimizer(p.optim, self.model, phase)
            if not self._train_epoch():  # the budget stopped it mid-epoch
                self._stop_mid_epoch()
                return
            self._end_epoch()
            if pr.stopped_by:
                break
        if not pr.stopped_by:
            pr.stopped_by = "epochs"
        self.save_state()

    def _train_epoch(self) -> bool:
        """The rest of this epoch's batches, a window per step; False when the time budget
        stopped it before its end."""
        p, pr = self.p, self.progress
        budget = p.train.budget_minutes * 60
        order = epoch_order(len(self.train_batches), p.seed, pr.epoch)
        # disable=None: no bar where stderr is no terminal (a log file, a queued run),
        # whose \r frames would pile up there; the log line per epoch says what matters.
        bar = tqdm(total=len(order), initial=pr.batch_pos, desc=f"epoch {pr.epoch}",
                   unit="batch", leave=False, dynamic_ncols=True,
                   disable=None if distributed.is_main() else True)
        while pr.batch_pos < len(order):
            t0 = time.perf_counter()
            window_ids = order[pr.batch_pos:pr.batch_pos + self.batches_per_step]
            window = [self.train_batches[i] for i in window_ids]
            loss = self.train_step(window)
            if self.live:
                self.live.step(pr.step_rows[-1])
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
            if budget and distributed.main_says(pr.wall_seconds >= budget, self.device):
                pr.stopped_by = "budget"
                log.info("train.budget_minutes (%.1f) reached at step %d: stopping",
                         p.train.budget_minutes, pr.step)
                break
            if p.train.save_every_steps and pr.step % p.train.save_every_steps == 0:
                self.save_state()
        bar.close()
        return pr.batch_pos >= len(order)

    def _stop_mid_epoch(self) -> None:
        """Validate and keep the weights where the budget stopped, and save the state at
        that batch: a continued run (budget raised) trains the rest of this epoch."""
        pr = self.progress
        pr.stopped_row = self._epoch_row(*self._validate())
        log.info("epoch %d stopped after %d of %d batches: val loss %.4f", pr.epoch,
                 pr.batch_pos, len(self.train_batches), pr.stopped_row["val_loss"])
        if distributed.is_main():
            resume.save_stopped_weights(self.state_dir, pr, self.cfg, self.model)
        self.save_state()
        if self.live:
            self.live.epoch(pr.stopped_row, self.metrics())

    def _validate(self) -> tuple[float, float | None]:
        """(validation loss, greedy validation BLEU or None); their time counts in the
        run's wall time, not in its training tokens/s."""
        t0 = time.perf_counter()
        val_loss = self.evaluate()
        bleu = None
        if self.val_bleu:
            t1 = time.perf_counter()
            bleu = self.val_bleu(self.model)
            self.progress.val_bleu_seconds += time.perf_counter() - t1
        self.progress.wall_seconds += time.perf_counter() - t0
        return val_loss, bleu

    def _epoch_row(self, val_loss: float, bleu: float | None) -> dict:
        """This epoch's log row: its training so far, the validation loss (and BLEU)."""
        pr = self.progress
        return {
            "epoch": pr.epoch,
            "train_loss": round(pr.epoch_nll / max(pr.epoch_tokens, 1), 5),
            "val_loss": round(val_loss, 5),
            "val_ppl": round(math.exp(min(val_loss, 50.0)), 3),
            "lr": self.lr(max(pr.step - 1, 0)),
            "seconds": round(pr.epoch_seconds, 2),
            "tokens_per_s": round(pr.epoch_tokens / max(pr.epoch_seconds, 1e-9), 1),
            "minutes": round(pr.wall_seconds / 60, 3),
            "peak_memory_mb": round(devices.peak_memory_mb(self.device), 1),
            **({"val_bleu": bleu} if bleu is not None else {}),
        }

    def _end_epoch(self) -> None:
        p, pr = self.p, self.progress
        val_loss, bleu = self._validate()
        row = self._epoch_row(val_loss, bleu)
        pr.epoch_rows.append(row)
        log.info("epoch %d: train loss %.4f, val loss %.4f%s, lr %.2e, %.0f s, %.0f tokens/s, "
                 "%.1f minutes so far", pr.epoch, row["train_loss"], row["val_loss"],
                 "" if bleu is None else f", val BLEU {bleu:.2f}", row["lr"], row["seconds"],
                 row["tokens_per_s"], row["minutes"])
        self._decide(val_loss)
        if distributed.is_main():
            resume.save_epoch_weights(self.state_dir, pr, self.cfg, self.model,
                                      p.train.keep_checkpoints, p.train.keep_best)
        if self.live:
            self.live.epoch(row, self.metrics())
        pr.epoch += 1
        pr.batch_pos = 0
        pr.epoch_nll = pr.epoch_seconds = 0.0
        pr.epoch_tokens = 0
        self.save_state()

    def _decide(self, val_loss: float) -> None:
        """The plateau guard, the best epoch and early stopping, decided once, on rank 0,
        and taken by every rank."""
        pr = self.progress
        if distributed.is_main():
            if self.lr.end_epoch(pr.epoch, val_loss):
                log.info("plateau guard: validation loss stalled, lr scaled down")
            if val_loss < pr.best_val_loss:
                pr.best_val_loss, pr.best_epoch, pr.bad_epochs = val_loss, pr.epoch, 0
            else:
                pr.bad_epochs += 1
            patience = self.p.train.early_stopping_patience
            if patience and pr.bad_epochs >= patience and not pr.stopped_by:
                pr.stopped_by = "early_stopping"
                log.info("early stopping: no better validation loss for %d epochs", patience)
        guard, pr.best_val_loss, pr.best_epoch, pr.bad_epochs, pr.stopped_by = \
            distributed.from_main((self.lr.state_dict(), pr.best_val_loss, pr.best_epoch,
                                   pr.bad_epochs, pr.stopped_by), self.device)
        self.lr.load_state_dict(guard)

    def metrics(self) -> dict[str, Any]:
        """data/train/metrics.json: the run's results so far, what it cost, and what made
        it (the torch version and the short hash of the training code)."""
        pr, dev, train = self.progress, self.device, self.p.train
        rows = pr.published_rows()
        best_val_loss, best_epoch = pr.best_val_loss, pr.best_epoch
        if pr.stopped_row and pr.stopped_row["val_loss"] < best_val_loss:
            best_val_loss, best_epoch = pr.stopped_row["val_loss"], pr.stopped_row["epoch"]
        ranks = distributed.world_size()
        hours = pr.wall_seconds / 3600 * ranks  # every rank's device (or threads) for the run
        return {
            "epochs": len(rows),
            "steps": pr.step,
            "best_val_loss": round(best_val_loss, 5),
            "best_epoch": best_epoch,
            "final_val_loss": rows[-1]["val_loss"] if rows else None,
            "stopped_by": pr.stopped_by or "running",  # live metrics, written as epochs end
            "train_minutes": round(pr.wall_seconds / 60, 2),
            **({"val_bleu_minutes": round(pr.val_bleu_seconds / 60, 2)} if train.val_bleu else {}),
            "wall_seconds": round(pr.wall_seconds, 1),
            "tokens_seen": pr.tokens_seen,
            "tokens_per_s": round(pr.tokens_seen / max(pr.train_seconds, 1e-9), 1),
            "peak_memory_mb": round(devices.peak_memory_mb(dev), 1),
            "device": devices.describe(dev),
            ("gpu_hours" if dev.type == "cuda" else "cpu_hours"):
                round(hours * (1 if dev.type == "cuda" else torch.get_num_threads()), 6),
            "parameters": count_parameters(self.model),
            "bf16": self.bf16,
            "batch_tokens": train.batch_tokens,
            "ranks": ranks,
            "global_batch_tokens": train.batch_tokens * self.batches_per_step,
            "torch": torch.__version__,
            "code": self.code,
        }


def compiled(module: torch.nn.Module, compile_: bool) -> torch.nn.Module:
    """`module` compiled (dynamic shapes: every batch has its own) when `compile_`, else
    itself."""
    return torch.compile(module, dynamic=True) if compile_ else module


def check_compiler(device: torch.device) -> None:
    """train.compile on the CPU needs a C++ compiler; warn that it has not paid there."""
    if device.type != "cpu":
        return
    if not (shutil.which("c++") or shutil.which("g++")):
        raise UserError("train.compile: torch.compile on the CPU needs a C++ compiler (c++ or "
                        "g++) on PATH; set train.compile: false")
    log.warning("train.compile on the CPU: it compiles for minutes and was slower than eager "
                "on the CPUs measured (docs/speed.md)")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
