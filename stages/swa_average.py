"""Stage swa-average: average the weights of the last epochs into one model.

The report's SWA (Izmailov et al., 2018, as checkpoint averaging): the mean of
the last N epoch checkpoints, N = swa.last_epochs or ceil(swa.last_fraction *
epochs run). N = 1 is the last model itself. Or, with swa.best_by, the
swa.best_epochs best epochs by validation loss (epochs.tsv) or validation BLEU:
the best epoch alone, or the average of the N best (nmt/averaging.py). Re-averaging
with another window or choice reruns this stage and after, never training.

Validation BLEU is computed here, greedy, for each kept checkpoint, only when
swa.best_by is val_bleu, with this run's translate length limits (training can log
it per epoch too: train.val_bleu). The kept checkpoints are the last
train.keep_checkpoints and the train.keep_best best by validation loss; to rank every
epoch by BLEU, keep them all (train.keep_checkpoints = epochs).

info.json also ranks every kept epoch (`ranked_epochs`, first = first choice: the
newest, or the best by swa.best_by): translate.ensemble takes its members from there.
"""
from __future__ import annotations

from nmt import checkpoints, fsio, paths
from nmt.averaging import swa_average
from nmt.errors import main_entry
from nmt.params import load


@main_entry
def main() -> None:
    params = load(stage="swa-average")
    fsio.sweep_leftovers(paths.MODEL)
    averaged = swa_average(params)
    with fsio.atomic_dir(paths.MODEL) as tmp:
        checkpoints.save_model(tmp / "averaged.pt", averaged.cfg, averaged.state_dict,
                               averaged.info)
        fsio.write_json(tmp / "info.json", averaged.info)


if __name__ == "__main__":
    main()
