"""Corpus scores with sacreBLEU (Post, 2018): BLEU and chrF with their signatures."""
from __future__ import annotations

from sacrebleu.metrics import BLEU, CHRF


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
