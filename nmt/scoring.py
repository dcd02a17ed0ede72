"""Corpus scores with sacreBLEU (Post, 2018): BLEU and chrF with their signatures."""
from __future__ import annotations

import logging
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF

from . import fsio
from .errors import UserError

log = logging.getLogger("nmt.bleu")


def bleu_metric(tokenize: str = "13a", lowercase: bool = False) -> BLEU:
    return BLEU(tokenize=tokenize, lowercase=lowercase)


def score(hyps: list[str], refs: list[str], tokenize: str = "13a",
          lowercase: bool = False) -> dict:
    """BLEU and chrF of one system against one reference, rounded, with signatures."""
    bleu, chrf = bleu_metric(tokenize, lowercase), CHRF(lowercase=lowercase)
    b = bleu.corpus_score(hyps, [refs])
    c = chrf.corpus_score(hyps, [refs])
    return {
        "bleu": round(b.score, 2),
        "chrf": round(c.score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "sentences": len(hyps),
    }


def score_splits(splits: tuple[str, ...], hyp_dir: Path, ref_dir: Path, tokenize: str = "13a",
                 lowercase: bool = False) -> tuple[dict, dict]:
    """BLEU and chrF of hyp_dir/{split}.hyp against ref_dir/{split}.tgt for each split, and
    apart from them their signatures. A split without a reference is marked skipped."""
    result: dict = {}
    signatures: dict = {}
    for split in splits:
        hyp_path, ref_path = hyp_dir / f"{split}.hyp", ref_dir / f"{split}.tgt"
        hyps = fsio.read_utf8_lines(hyp_path)
        if not ref_path.exists():
            log.info("%s: no reference translation (%s): %s BLEU skipped", split, ref_path, split)
            result[split] = {"skipped": "no reference"}
            continue
        refs = fsio.read_utf8_lines(ref_path)
        if len(hyps) != len(refs):
            raise UserError(f"{hyp_path}: {len(hyps)} lines, but the reference {ref_path} has "
                            f"{len(refs)}")
        result[split] = score(hyps, refs, tokenize, lowercase)
        signatures[split] = {metric: result[split].pop(f"{metric}_signature")
                             for metric in ("bleu", "chrf")}
        log.info("%s: BLEU %.2f, chrF %.2f (%s)", split, result[split]["bleu"],
                 result[split]["chrf"], signatures[split]["bleu"])
    return result, signatures
