"""Stage swa-average: average the weights of the last epochs into one model.

The report's SWA (Izmailov et al., 2018, as checkpoint averaging): the mean of
the last N epoch checkpoints, N = swa.last_epochs or ceil(swa.last_fraction *
epochs run). N = 1 is the last model itself. Re-averaging with another window
reruns this stage only, never training.
"""
from __future__ import annotations

import logging

import torch

from nmt import checkpoints, fsio, paths
from nmt.errors import UserError, main_entry
from nmt.params import load, swa_window

log = logging.getLogger("nmt.swa")


def average(state_dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating tensors (in float64); other tensors from the last."""
    out = {}
    for key, last in state_dicts[-1].items():
        if last.is_floating_point():
            total = torch.zeros_like(last, dtype=torch.float64)
            for sd in state_dicts:
                total += sd[key].to(torch.float64)
            out[key] = (total / len(state_dicts)).to(last.dtype)
        else:
            out[key] = last.clone()
    return out


def available_epochs() -> list[int]:
    found = checkpoints.list_epochs(paths.CHECKPOINTS)
    if not found:
        raise UserError(f"{paths.CHECKPOINTS}: no epoch checkpoints; run the train stage first")
    return found


def read_train_metrics() -> dict:
    """The train stage's metrics.json: the epochs it ran and why it stopped."""
    path = paths.TRAIN_METRICS
    metrics = fsio.read_json(path, "train")
    if not (isinstance(metrics, dict) and isinstance(metrics.get("epochs"), int)
            and isinstance(metrics.get("stopped_by"), str)):
        raise UserError(f"{path}: lacks 'epochs' (an integer) or 'stopped_by'; "
                        "rerun the train stage")
    return metrics


@main_entry
def main() -> None:
    params = load()
    fsio.sweep_leftovers(paths.MODEL)
    train_metrics = read_train_metrics()
    epochs_run = train_metrics["epochs"]
    want = swa_window(params.swa, epochs_run)
    have = available_epochs()
    if want > len(have):
        if train_metrics["stopped_by"] == "epochs":
            raise UserError(f"swa: {want} checkpoints asked for, but only {len(have)} were kept "
                            f"(raise train.keep_checkpoints)")
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
    info = {"epochs_averaged": chosen, "epochs_run": epochs_run,
            "stopped_by": train_metrics["stopped_by"]}
    with fsio.atomic_dir(paths.MODEL) as tmp:
        checkpoints.save_model(tmp / "averaged.pt", cfg, average(states), info)
        fsio.write_json(tmp / "info.json", info)


if __name__ == "__main__":
    main()
