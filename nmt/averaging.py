"""Choosing and averaging epoch checkpoints: the swa-average stage's library.

The report's SWA (Izmailov et al., 2018, as checkpoint averaging) is the mean of
the last N epoch checkpoints; with swa.best_by, the N best by validation loss
(epochs.tsv) or greedy validation BLEU instead. `ranked` orders the kept epochs,
first choice first; translate.ensemble takes its members from that order.
"""
from __future__ import annotations

import logging

import torch

from . import checkpoints, device as devices, fsio, paths, trainlog
from .errors import UserError
from .params import Swa, Translate
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


def read_train_metrics() -> dict:
    """The train stage's metrics.json: the epochs it ran and why it stopped."""
    path = paths.TRAIN_METRICS
    metrics = fsio.read_json(path, "train")
    if not (isinstance(metrics, dict) and isinstance(metrics.get("epochs"), int)
            and isinstance(metrics.get("stopped_by"), str)):
        raise UserError(f"{path}: lacks 'epochs' (an integer) or 'stopped_by'; "
                        "rerun the train stage")
    return metrics
