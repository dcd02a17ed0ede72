"""Stage translate: the averaged model translates the val and test sources.

Sentences are sorted by length (longest first) and decoded in batches of
translate.batch_sentences, so a batch holds similar lengths: little padding,
and its sentences finish at about the same step. Hypotheses come back in the
input's order, one line per source line; a line with no tokens (empty) gets an
empty hypothesis. The .hyp files and stats.json appear together, and only once
both splits are translated.
"""
from __future__ import annotations

import logging
import time

import torch
from tqdm import tqdm

from nmt import checkpoints, device as devices, fsio, paths
from nmt.errors import UserError, main_entry
from nmt.model import Seq2SeqTransformer
from nmt.params import Translate, load
from nmt.search import translate_ids
from nmt.tokenizer import Tokenizers

log = logging.getLogger("nmt.translate")
SPLITS = ("val", "test")


def translate_lines(model: Seq2SeqTransformer, tok: Tokenizers, lines: list[str], cfg: Translate,
                    device: torch.device, desc: str = "") -> list[str]:
    """Source lines -> detokenised hypotheses, one per line, in order."""
    src = tok.encode_src(lines)
    order = sorted((i for i, ids in enumerate(src) if ids), key=lambda i: -len(src[i]))
    hyps: list[list[int]] = [[] for _ in src]
    with tqdm(total=len(order), desc=desc, unit="sentence") as bar:
        for start in range(0, len(order), cfg.batch_sentences):
            batch = order[start:start + cfg.batch_sentences]
            out = translate_ids(model, [src[i] for i in batch], beam_size=cfg.beam_size,
                                length_penalty=cfg.length_penalty, max_len_a=cfg.max_len_a,
                                max_len_b=cfg.max_len_b, bos=tok.bos_id, eos=tok.eos_id,
                                pad=tok.pad_id, device=device)
            for i, ids in zip(batch, out):
                hyps[i] = ids
            bar.update(len(batch))
    return tok.decode_tgt(hyps)


@main_entry
def main() -> None:
    params = load()
    device = devices.pick("auto")
    model_path = paths.MODEL / "averaged.pt"
    model, _ = checkpoints.load_model(model_path, device)
    tok = Tokenizers.load(paths.PREPARED)
    if (model.cfg.src_vocab_size, model.cfg.tgt_vocab_size) != (tok.src_vocab_size,
                                                                tok.tgt_vocab_size):
        raise UserError(f"{model_path}: made for other vocabularies than those in "
                        f"{paths.PREPARED}; rerun train and swa-average")
    stats = {"beam_size": params.translate.beam_size, "device": devices.describe(device)}
    hyps = {}
    for split in SPLITS:
        lines = fsio.read_utf8_lines(paths.PREPARED / f"{split}.src", what=f"{split} sources")
        start = time.perf_counter()
        hyps[split] = translate_lines(model, tok, lines, params.translate, device, desc=split)
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
