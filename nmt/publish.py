"""The train stage's outputs, written from the final resume state: the kept epoch
weights, the logs and the run's metrics, each replaced atomically."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import checkpoints, fsio, trainlog
from .params import Train
from .resume import EPOCH_DIR, Progress


def publish(progress: Progress, metrics: dict[str, Any], train: Train, state_dir: Path,
            checkpoints_dir: Path, log_dir: Path, metrics_path: Path) -> None:
    """Write the stage's outputs from a finished run's `progress` and `metrics`
    (Trainer.metrics()): the weights of the epochs `train` (the params group) keeps, from
    `state_dir`, into `checkpoints_dir`; both logs into `log_dir`; `metrics` to
    `metrics_path`."""
    with fsio.atomic_dir(checkpoints_dir) as tmp:
        checkpoints.copy_epochs(state_dir / EPOCH_DIR, tmp,
                                progress.published_epochs(train.keep_checkpoints,
                                                          train.keep_best))
    trainlog.write(log_dir, progress.published_rows(), progress.step_rows, train.val_bleu)
    fsio.write_json(metrics_path, metrics)
