"""The subsample stage's draw: a random `subsample.fraction` of the prepared training
pairs, the same for every training seed (it has its own, subsample.seed)."""
from __future__ import annotations

import random
from pathlib import Path

from . import fsio
from .errors import UserError
from .params import Subsample


def draw(n: int, fraction: float, seed: int) -> list[int]:
    """Sorted indices of max(1, round(fraction * n)) of n items, drawn with random.Random(seed)."""
    k = max(1, round(fraction * n))
    return sorted(random.Random(seed).sample(range(n), k))


def subsample(prepared: Path, cfg: Subsample) -> tuple[list[str], list[str], dict]:
    """The kept pairs of prepared/train.{src,tgt}, in corpus order, and their stats."""
    src = fsio.read_utf8_lines(prepared / "train.src", "prepared training text")
    tgt = fsio.read_utf8_lines(prepared / "train.tgt", "prepared training text")
    if not src or len(src) != len(tgt):
        raise UserError(
            f"{prepared}: train.src ({len(src)} lines) and train.tgt ({len(tgt)} lines) "
            "are empty or not aligned; run the prepare stage again")
    kept = draw(len(src), cfg.fraction, cfg.seed)
    stats = {"fraction": cfg.fraction, "seed": cfg.seed, "pairs_in": len(src),
             "pairs_kept": len(kept)}
    return [src[i] for i in kept], [tgt[i] for i in kept], stats
