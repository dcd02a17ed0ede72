"""Stage train: subsampled pairs -> epoch checkpoints, per-epoch/step logs, cost metrics.

With train.nproc_per_node or train.nnodes above 1 the stage runs itself again under
torchrun, once per rank (nmt/distributed.py); rank 0 writes the outputs.
"""
from __future__ import annotations

import logging

from nmt import distributed, paths, training
from nmt.errors import main_entry
from nmt.params import load
from nmt.publish import publish

log = logging.getLogger("nmt.train")


@main_entry
def main() -> None:
    params = load(stage="train")
    if cmd := distributed.launch_command(params.train, "stages.train"):
        distributed.launch(cmd, params.train)  # this stage again, once per rank, under torchrun
    trainer = training.train(params)
    if not distributed.is_main():
        return
    metrics = trainer.metrics()
    publish(trainer.progress, metrics, params.train, paths.TRAIN_STATE, paths.CHECKPOINTS,
            paths.TRAIN_LOG, paths.TRAIN_METRICS)
    log.info("done: %d epochs (%s), best val loss %.4f at epoch %d, %.1f minutes, "
             "%.0f tokens/s", metrics["epochs"], metrics["stopped_by"], metrics["best_val_loss"],
             metrics["best_epoch"], metrics["train_minutes"], metrics["tokens_per_s"])


if __name__ == "__main__":
    main()
