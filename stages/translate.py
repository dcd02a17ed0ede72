"""Stage translate: the averaged model (or, with translate.ensemble > 1, an ensemble
of epoch checkpoints: nmt.ensemble) translates the val and test sources.

Hypotheses come back in the input's order, one line per source line; a line
with no tokens (empty) gets an empty hypothesis (nmt.search.translate_all).
The .hyp files and stats.json appear together, and only once both splits are
translated.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from nmt import device as devices, ensemble, fsio, memory, paths
from nmt.errors import UserError, main_entry
from nmt.params import load
from nmt.search import translate_all
from nmt.tokenizer import Tokenizers

log = logging.getLogger("nmt.translate")
SPLITS = ("val", "test")


@main_entry
def main() -> None:
    params = load(stage="translate")
    fsio.sweep_leftovers(paths.TRANSLATIONS)
    device = devices.pick("auto")
    model, model_path = ensemble.load(Path("."), params.translate.ensemble, device)
    tok = Tokenizers.load(paths.PREPARED)
    if (model.cfg.src_vocab_size, model.cfg.tgt_vocab_size) != (tok.src_vocab_size,
                                                                tok.tgt_vocab_size):
        raise UserError(f"{model_path}: made for other vocabularies than those in "
                        f"{paths.PREPARED}; rerun train and swa-average")
    stats = {"beam_size": params.translate.beam_size, "model": model_path,
             "device": devices.describe(device)}
    hyps = {}
    for split in SPLITS:
        lines = fsio.read_utf8_lines(paths.PREPARED / f"{split}.src", what=f"{split} sources")
        start = time.perf_counter()
        with memory.translate_out_of_memory_hint(params.translate.batch_sentences,
                                                 params.translate.beam_size,
                                                 params.translate.ensemble, device):
            ids = translate_all(model, tok.encode_src(lines), params.translate, bos=tok.bos_id,
                                eos=tok.eos_id, pad=tok.pad_id, device=device, desc=split)
        hyps[split] = tok.decode_tgt(ids)
        seconds = time.perf_counter() - start
        rate = len(lines) / seconds
        log.info("%s: %d sentences in %.1f s (%.1f sentences/s, beam %d, %s)", split, len(lines),
                 seconds, rate, params.translate.beam_size, device)
        stats[split] = {"sentences": len(lines), "seconds": round(seconds, 3),
                        "sentences_per_s": round(rate, 2)}
    with fsio.atomic_dir(paths.TRANSLATIONS) as out:
        for split in SPLITS:
            fsio.write_lines(out / f"{split}.hyp", hyps[split])
        fsio.write_json(out / "stats.json", stats)


if __name__ == "__main__":
    main()
