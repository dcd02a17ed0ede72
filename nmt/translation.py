"""Translating text with the `translate` params: the translate stage's work
(`translate_splits`) and the path from lines to translated lines that it shares with
`nmtlab translate` (`translate_lines`).

Hypotheses come back in the input's order, one line per source line; a line with no
tokens (empty) gets an empty hypothesis (nmt.search.translate_all).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from . import device as devices, ensemble, fsio, paths
from .errors import UserError
from .model import Seq2SeqTransformer
from .params import Translate
from .search import translate_all
from .tokenizer import Tokenizers

log = logging.getLogger("nmt.translate")


def translate_lines(model: Seq2SeqTransformer | ensemble.Ensemble, tok: Tokenizers,
                    lines: list[str], cfg: Translate, device: torch.device,
                    desc: str | None = None) -> list[str]:
    """Normalised source lines -> translated lines, in order; `desc` labels a progress bar."""
    ids = translate_all(model, tok.encode_src(lines), cfg, special=tok.special, device=device,
                        desc=desc)
    return tok.decode_tgt(ids)


def translate_splits(cfg: Translate, device: torch.device, splits: tuple[str, ...],
                     root: Path = Path(".")) -> tuple[dict[str, list[str]], dict]:
    """Translate data/prepared/{split}.src of the project at `root` with its averaged model
    or translate.ensemble's members: the hypotheses of each split, and stats (the
    model, device and each split's sentences/s)."""
    model, model_path = ensemble.load(root, cfg.ensemble, device)
    prepared = root / paths.PREPARED
    tok = Tokenizers.load(prepared)
    if (model.cfg.src_vocab_size, model.cfg.tgt_vocab_size) != (tok.src_vocab_size,
                                                                tok.tgt_vocab_size):
        raise UserError(f"{model_path}: made for other vocabularies than those in "
                        f"{prepared}; rerun train and swa-average")
    stats = {"beam_size": cfg.beam_size, "model": model_path, "device": devices.describe(device)}
    hyps = {}
    for split in splits:
        lines = fsio.read_utf8_lines(prepared / f"{split}.src", what=f"{split} sources")
        start = time.perf_counter()
        hyps[split] = translate_lines(model, tok, lines, cfg, device, desc=split)
        seconds = time.perf_counter() - start
        rate = len(lines) / seconds
        log.info("%s: %d sentences in %.1f s (%.1f sentences/s, beam %d, %s)", split, len(lines),
                 seconds, rate, cfg.beam_size, device)
        stats[split] = {"sentences": len(lines), "seconds": round(seconds, 3),
                        "sentences_per_s": round(rate, 2)}
    return hyps, stats
