"""Stage subsample: keep a random `subsample.fraction` of the prepared training pairs.

Writes data/subsampled/{train.src,train.tgt,stats.json} whole or not at all.
Val and test are not copied: later stages read them from data/prepared/.
"""
from __future__ import annotations

import logging
import random

from nmt import errors, fsio, params, paths
from nmt.errors import UserError

log = logging.getLogger("nmt")


def draw(n: int, fraction: float, seed: int) -> list[int]:
    """Sorted indices of max(1, round(fraction * n)) of n items, drawn with random.Random(seed)."""
    k = max(1, round(fraction * n))
    return sorted(random.Random(seed).sample(range(n), k))


@errors.main_entry
def main() -> None:
    p = params.load(stage="subsample")
    fsio.sweep_leftovers(paths.SUBSAMPLED)
    src = fsio.read_utf8_lines(paths.PREPARED / "train.src", "prepared training text")
    tgt = fsio.read_utf8_lines(paths.PREPARED / "train.tgt", "prepared training text")
    if not src or len(src) != len(tgt):
        raise UserError(
            f"{paths.PREPARED}: train.src ({len(src)} lines) and train.tgt ({len(tgt)} lines) "
            "are empty or not aligned; run the prepare stage again")
    kept = draw(len(src), p.subsample.fraction, p.subsample.seed)
    with fsio.atomic_dir(paths.SUBSAMPLED) as out:
        fsio.write_lines(out / "train.src", [src[i] for i in kept])
        fsio.write_lines(out / "train.tgt", [tgt[i] for i in kept])
        fsio.write_json(out / "stats.json", {
            "fraction": p.subsample.fraction,
            "seed": p.subsample.seed,
            "pairs_in": len(src),
            "pairs_kept": len(kept),
        })
    log.info("kept %d of %d training pairs (fraction %g, seed %d) in %s",
             len(kept), len(src), p.subsample.fraction, p.subsample.seed, paths.SUBSAMPLED)


if __name__ == "__main__":
    main()
