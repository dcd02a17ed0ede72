"""Stage plots: PNGs of the training curves (loss per epoch, learning rate per step,
and validation BLEU against training minutes where training logged it: train.val_bleu).

Runs last: the loss figure's title carries the run's test BLEU.
"""
from __future__ import annotations

import os

from nmt import fsio, paths, trainlog
from nmt.errors import UserError, main_entry
from nmt.params import load
from nmt.plotting import training_figures


@main_entry
def main() -> None:
    params = load(stage="plots")
    fsio.sweep_leftovers(paths.FIGURES)
    epochs = trainlog.read(paths.TRAIN_LOG / trainlog.EPOCHS_FILE)
    steps = trainlog.read(paths.TRAIN_LOG / trainlog.STEPS_FILE)
    if not epochs or not steps:
        raise UserError(f"{paths.TRAIN_LOG}: training logs are empty; rerun the train stage")
    bleu_metrics = fsio.read_json(paths.BLEU_METRICS, "bleu")
    test = bleu_metrics.get("test", {}) if isinstance(bleu_metrics, dict) else {}
    with fsio.atomic_dir(paths.FIGURES) as tmp:
        training_figures(tmp, epochs, steps, name=os.environ.get("DVC_EXP_NAME", "workspace"),
                         test_bleu=test.get("bleu"), dpi=params.plots.dpi)


if __name__ == "__main__":
    main()
