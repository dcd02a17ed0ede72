"""Stage swa-average: average the weights of the last epochs into one model.

The report's SWA (Izmailov et al., 2018, as checkpoint averaging): the mean of
the last N epoch checkpoints, N = swa.last_epochs or ceil(swa.last_fraction *
epochs run). N = 1 is the last model itself. Or, with swa.best_by, the
swa.best_epochs best epochs by validation loss (epochs.tsv) or validation BLEU:
the best epoch alone, or the average of the N best. Re-averaging with another
window or choice reruns this stage and after, never training.

Validation BLEU is computed here, greedy, for each kept checkpoint, only when
swa.best_by is val_bleu, with this run's translate length limits. (Training can
log it per epoch too, train.val_bleu, as the full preset does: about a fifth of
a default epoch, 2-3 s of greedy decoding of the 1,014 validation sentences
against 13-15 s, and 3.8% of the full preset's training time.) The kept
checkpoints are the last train.keep_checkpoints and the train.keep_best best by
validation loss; to rank every epoch by BLEU, keep them all
(train.keep_checkpoints = epochs).

info.json also ranks every kept epoch (`ranked_epochs`, first = first choice:
the newest, or the best by swa.best_by): translate.ensemble takes its members
from there.
"""
from __future__ import annotations

import logging

from nmt import checkpoints, fsio, paths, trainlog
from nmt.averaging import average, available_epochs, ranked, read_train_metrics, val_bleu
from nmt.errors import UserError, main_entry
from nmt.params import load, swa_window

log = logging.getLogger("nmt.swa")


@main_entry
def main() -> None:
    params = load(stage="swa-average")
    fsio.sweep_leftovers(paths.MODEL)
    train_metrics = read_train_metrics()
    epochs_run = train_metrics["epochs"]
    have = available_epochs()
    if params.swa.best_by == "val_bleu":
        value = val_bleu(have, params.translate)
    else:
        value = {int(r["epoch"]): r["val_loss"]
                 for r in trainlog.read(paths.TRAIN_LOG / trainlog.EPOCHS_FILE)}
    order = ranked(params.swa, have, value)
    if params.swa.best_by != "none":
        chosen = sorted(order[:params.swa.best_epochs])
    else:
        want = swa_window(params.swa, epochs_run)
        if want > len(have):
            if train_metrics["stopped_by"] == "epochs":
                raise UserError(f"swa: {want} checkpoints asked for, but only {len(have)} were "
                                f"kept (raise train.keep_checkpoints)")
            log.warning("training stopped early (%s): averaging the %d checkpoints there are, "
                        "not %d", train_metrics["stopped_by"], len(have), want)
            want = len(have)
        chosen = have[-want:]
    log.info("averaging epochs %s", ", ".join(map(str, chosen)))
    cfg = None
    states = []
    for e in chosen:
        path = checkpoints.epoch_path(paths.CHECKPOINTS, e)
        file_cfg, state, _ = checkpoints.load_model_file(path)
        if cfg is not None and file_cfg != cfg:
            raise UserError(f"{path}: its model config differs from epoch {chosen[0]}'s; "
                            "rerun the train stage")
        cfg = file_cfg
        states.append(state)
    info = {"epochs_averaged": chosen, "ranked_epochs": order, "epochs_run": epochs_run,
            **({"val_bleu": value} if params.swa.best_by == "val_bleu" else {}),
            "stopped_by": train_metrics["stopped_by"]}
    with fsio.atomic_dir(paths.MODEL) as tmp:
        checkpoints.save_model(tmp / "averaged.pt", cfg, average(states), info)
        fsio.write_json(tmp / "info.json", info)


if __name__ == "__main__":
    main()
