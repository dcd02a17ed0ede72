"""Stage swa-average: average the weights of the last epochs into one model.

The report's SWA (Izmailov et al., 2018, as checkpoint averaging): the mean of
the last N epoch checkpoints, N = swa.last_epochs or ceil(swa.last_fraction *
epochs run). N = 1 is the last model itself. Or, with swa.best_by, the
swa.best_epochs best epochs by validation loss (epochs.tsv) or validation BLEU:
the best epoch alone, or the average of the N best. Re-averaging with another
window or choice reruns this stage and after, never training.

Validation BLEU is computed here, greedy, for each kept checkpoint, only when
swa.best_by is val_bleu (per epoch during training it would cost about a
quarter of the default run's training time: greedy decoding of the 1,014
validation sentences takes 2-3 s, an epoch 9 s). The kept checkpoints are the
last train.keep_checkpoints and the train.keep_best best by validation loss;
to rank every epoch by BLEU, keep them all (train.keep_checkpoints = epochs).

info.json also ranks every kept epoch (`ranked_epochs`, first = first choice:
the newest, or the best by swa.best_by): translate.ensemble takes its members
from there.
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from nmt import checkpoints, device as devices, fsio, paths, trainlog
from nmt.errors import UserError, main_entry
from nmt.params import Swa, Translate, load, swa_window
from nmt.scoring import score
from nmt.search import translate_all
from nmt.tokenizer import Tokenizers

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
    greedy = dataclasses.replace(translate, beam_size=1, ensemble=1)
    scores = {}
    for e in have:
        model, _ = checkpoints.load_model(checkpoints.epoch_path(paths.CHECKPOINTS, e), device)
        hyps = translate_all(model, src, greedy, bos=tok.bos_id, eos=tok.eos_id,
                             pad=tok.pad_id, device=device)
        scores[e] = score(tok.decode_tgt(hyps), refs)["bleu"]
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


@main_entry
def main() -> None:
    params = load()
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
