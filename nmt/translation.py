"""Translating text with the `translate` params: the translate stage's work
(`translate_splits`) and the path from lines to translated lines that it shares with
`nmtlab translate` (`translate_lines`), and the stage's out-of-memory line
(`out_of_memory_hint`), which names the setting to lower as training's does.

Hypotheses come back in the input's order, one line per source line; a line with no
tokens (empty) gets an empty hypothesis (nmt.search.translate_all).
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
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
        with out_of_memory_hint(cfg, device):
            hyps[split] = translate_lines(model, tok, lines, cfg, device, desc=split)
        seconds = time.perf_counter() - start
        rate = len(lines) / seconds
        log.info("%s: %d sentences in %.1f s (%.1f sentences/s, beam %d, %s)", split, len(lines),
                 seconds, rate, cfg.beam_size, device)
        stats[split] = {"sentences": len(lines), "seconds": round(seconds, 3),
                        "sentences_per_s": round(rate, 2)}
    return hyps, stats


@contextlib.contextmanager
def out_of_memory_hint(cfg: Translate, where: object) -> Iterator[None]:
    """Decoding's out-of-memory error as one line naming the setting to lower: the batch of
    sentences (the same search, in smaller pieces), else the beam or the ensemble."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError):
        smaller = [f"translate.{key}={value // 2}" for key, value in (
            ("batch_sentences", cfg.batch_sentences), ("beam_size", cfg.beam_size),
            ("ensemble", cfg.ensemble)) if value > 1]
        raise UserError(
            f"translate: out of memory on {where} at translate.batch_sentences="
            f"{cfg.batch_sentences} with translate.beam_size={cfg.beam_size}"
            f"{f' and translate.ensemble={cfg.ensemble}' if cfg.ensemble > 1 else ''}; "
            + (f"try {smaller[0]}" + (f" (or {smaller[1]})" if len(smaller) > 1 else "")
               if smaller else "nothing left to lower: free memory on the device")) from None
