"""The train stage's outputs, written from the final resume state: the kept epoch
weights, the logs and the run's metrics, each replaced atomically."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import checkpoints, device as devices, distributed, fsio, trainlog
from .model import count_parameters
from .resume import EPOCH_DIR

if TYPE_CHECKING:
    from .trainer import Trainer


def metrics(trainer: Trainer) -> dict[str, Any]:
    """data/train/metrics.json: the run's results so far and what it cost."""
    pr, dev = trainer.progress, trainer.device
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
        **({"val_bleu_minutes": round(pr.val_bleu_seconds / 60, 2)}
           if trainer.p.train.val_bleu else {}),
        "wall_seconds": round(pr.wall_seconds, 1),
        "tokens_seen": pr.tokens_seen,
        "tokens_per_s": round(pr.tokens_seen / max(pr.train_seconds, 1e-9), 1),
        "peak_memory_mb": round(devices.peak_memory_mb(dev), 1),
        "device": devices.describe(dev),
        ("gpu_hours" if dev.type == "cuda" else "cpu_hours"):
            round(hours * (1 if dev.type == "cuda" else torch.get_num_threads()), 6),
        "parameters": count_parameters(trainer.model),
        "bf16": trainer.bf16,
        "batch_tokens": trainer.p.train.batch_tokens,
        "ranks": ranks,
        "global_batch_tokens": trainer.p.train.batch_tokens * trainer.batches_per_step,
    }


def publish(trainer: Trainer, checkpoints_dir: Path, log_dir: Path,
            metrics_path: Path) -> dict[str, Any]:
    """Write the stage's outputs from the final state: kept weights, logs, metrics."""
    pr = trainer.progress
    with fsio.atomic_dir(checkpoints_dir) as tmp:
        checkpoints.copy_epochs(trainer.state_dir / EPOCH_DIR, tmp,
                                pr.published_epochs(trainer.p.train.keep_checkpoints,
                                                    trainer.p.train.keep_best))
    trainlog.write(log_dir, pr.published_rows(), pr.step_rows, trainer.p.train.val_bleu)
    result = metrics(trainer)
    fsio.write_json(metrics_path, result)
    return result
