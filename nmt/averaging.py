"""Choosing and averaging epoch checkpoints: the swa-average stage's library.

The report's SWA (Izmailov et al., 2018, as checkpoint averaging) is the mean of
the last N epoch checkpoints; with swa.best_by, the N best by validation loss
(epochs.tsv) or greedy validation BLEU instead. `ranked` orders the kept epochs,
first choice first; translate.ensemble takes its members from that order.

`swa_average` is the stage's whole work: it chooses the epochs (`choose`) and
averages their weights (`average_epochs`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from . import checkpoints, device as devices, fsio, paths, trainlog
from .errors import UserError
from .model import ModelConfig
from .params import Params, Swa, Translate, swa_window
from .search import greedy_bleu
from .tokenizer import Tokenizers

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


def ranked(swa: Swa, have: list[int], value: dict[int, float]) -> list[int]:
    """The kept epochs, first choice first: the newest, or the best by swa.best_by, whose
    value per epoch is `value` (lowest val_loss, highest val_bleu; a tie goes to the
    later epoch)."""
    if swa.best_by == "none":
        return sorted(have, reverse=True)
    missing = [e for e in have if e not in value]
    if missing:
        raise UserError(f"{paths.TRAIN_LOG / trainlog.EPOCHS_FILE}: no {swa.best_by} for epochs "
                        f"{missing} (swa.best_by); rerun the train stage")
    sign = 1 if swa.best_by == "val_loss" else -1
    def key(e: int) -> tuple[float, int]:
        return sign * value[e], -e
    lost = [e for e in sorted(value, key=key)[:swa.best_epochs] if e not in have]
    if lost:
        raise UserError(f"swa.best_epochs: the best epochs by {swa.best_by} include {lost}, "
                        f"whose weights were not kept (raise train.keep_best)")
    return sorted(have, key=key)


def val_bleu(have: list[int], translate: Translate) -> dict[int, float]:
    """Greedy validation BLEU of each kept checkpoint (the other translate settings as
    the translate stage uses them)."""
    device = devices.pick("auto")
    tok = Tokenizers.load(paths.PREPARED)
    src = tok.encode_src(fsio.read_utf8_lines(paths.PREPARED / "val.src", what="val sources"))
    refs = fsio.read_utf8_lines(paths.PREPARED / "val.tgt", what="val references")
    scores = {}
    for e in have:
        model, _ = checkpoints.load_model(checkpoints.epoch_path(paths.CHECKPOINTS, e), device)
        scores[e] = greedy_bleu(model, src, refs, translate, decode=tok.decode_tgt,
                                special=tok.special, device=device)
        log.info("epoch %d: greedy validation BLEU %.2f", e, scores[e])
    return scores


@dataclass
class Averaged:
    """The swa-average stage's result: the model and its data/model/info.json."""

    cfg: ModelConfig
    state_dict: dict[str, torch.Tensor]
    info: dict


def swa_average(params: Params) -> Averaged:
    """Choose the epochs the `swa` params ask for among the kept checkpoints and average
    their weights; info records the choice, every kept epoch ranked, and why training
    stopped."""
    train_metrics = read_train_metrics()
    have = available_epochs()
    if params.swa.best_by == "val_bleu":
        value = val_bleu(have, params.translate)
    else:
        value = {int(r["epoch"]): r["val_loss"]
                 for r in trainlog.read(paths.TRAIN_LOG / trainlog.EPOCHS_FILE)}
    order = ranked(params.swa, have, value)
    chosen = choose(params.swa, have, order, train_metrics)
    log.info("averaging epochs %s", ", ".join(map(str, chosen)))
    cfg, state = average_epochs(chosen)
    info = {"epochs_averaged": chosen, "ranked_epochs": order,
            "epochs_run": train_metrics["epochs"],
            **({"val_bleu": value} if params.swa.best_by == "val_bleu" else {}),
            "stopped_by": train_metrics["stopped_by"]}
    return Averaged(cfg, state, info)


def choose(swa: Swa, have: list[int], order: list[int], train_metrics: dict) -> list[int]:
    """The epochs to average, ascending: the swa.best_epochs first of `order` with
    swa.best_by, else the last of `have` that swa.last_epochs or swa.last_fraction asks
    for (all there are when training stopped early, with a warning)."""
    if swa.best_by != "none":
        return sorted(order[:swa.best_epochs])
    want = swa_window(swa, train_metrics["epochs"])
    if want > len(have):
        if train_metrics["stopped_by"] == "epochs":
            raise UserError(f"swa: {want} checkpoints asked for, but only {len(have)} were "
                            f"kept (raise train.keep_checkpoints)")
        log.warning("training stopped early (%s): averaging the %d checkpoints there are, "
                    "not %d", train_metrics["stopped_by"], len(have), want)
        want = len(have)
    return have[-want:]


def average_epochs(epochs: list[int]) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The config and the averaged weights of these epochs' checkpoints, which must share
    one config."""
    cfg = None
    states = []
    for e in epochs:
        path = checkpoints.epoch_path(paths.CHECKPOINTS, e)
        file_cfg, state, _ = checkpoints.load_model_file(path)
        if cfg is not None and file_cfg != cfg:
            raise UserError(f"{path}: its model config differs from epoch {epochs[0]}'s; "
                            "rerun the train stage")
        cfg = file_cfg
        states.append(state)
    return cfg, average(states)


def read_train_metrics() -> dict:
    """The train stage's metrics.json: the epochs it ran and why it stopped."""
    path = paths.TRAIN_METRICS
    metrics = fsio.read_json(path, "train")
    if not (isinstance(metrics, dict) and isinstance(metrics.get("epochs"), int)
            and isinstance(metrics.get("stopped_by"), str)):
        raise UserError(f"{path}: lacks 'epochs' (an integer) or 'stopped_by'; "
                        "rerun the train stage")
    return metrics
