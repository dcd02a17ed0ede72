"""Stage plots: PNGs of the training curves (loss per epoch, learning rate per step,
and validation BLEU against training minutes where training logged it: train.val_bleu).

Runs last: the loss figure's title carries the run's test BLEU.
"""
from __future__ import annotations

import os

from nmt import fsio, paths, trainlog
from nmt.errors import UserError, main_entry
from nmt.params import load
from nmt.plotting import line_plot


@main_entry
def main() -> None:
    params = load(stage="plots")
    fsio.sweep_leftovers(paths.FIGURES)
    name = os.environ.get("DVC_EXP_NAME", "workspace")
    epochs = trainlog.read(paths.TRAIN_LOG / trainlog.EPOCHS_FILE)
    steps = trainlog.read(paths.TRAIN_LOG / trainlog.STEPS_FILE)
    if not epochs or not steps:
        raise UserError(f"{paths.TRAIN_LOG}: training logs are empty; rerun the train stage")
    x = [r["epoch"] for r in epochs]
    bleu_metrics = fsio.read_json(paths.BLEU_METRICS, "bleu")
    test = bleu_metrics.get("test", {}) if isinstance(bleu_metrics, dict) else {}
    bleu = f", test BLEU {test['bleu']:.1f}" if "bleu" in test else ""
    with fsio.atomic_dir(paths.FIGURES) as tmp:
        line_plot(tmp / "loss.png",
                  {"train loss": (x, [r["train_loss"] for r in epochs]),
                   "validation loss": (x, [r["val_loss"] for r in epochs])},
                  title=f"Loss per epoch ({name}{bleu})", xlabel="epoch",
                  ylabel="cross-entropy per target token", dpi=params.plots.dpi)
        line_plot(tmp / "lr.png",
                  {"learning rate": ([r["step"] for r in steps], [r["lr"] for r in steps])},
                  title=f"Learning rate per optimizer step ({name})", xlabel="optimizer step",
                  ylabel="learning rate", dpi=params.plots.dpi, markers=False)
        if all(trainlog.BLEU_COLUMN in r for r in epochs):
            line_plot(tmp / "val_bleu.png",
                      {"greedy validation BLEU": ([r["minutes"] for r in epochs],
                                                  [r[trainlog.BLEU_COLUMN] for r in epochs])},
                      title=f"Validation BLEU against training time ({name})",
                      xlabel="training minutes (validation included)",
                      ylabel="BLEU (greedy, validation set)", dpi=params.plots.dpi)


if __name__ == "__main__":
    main()
