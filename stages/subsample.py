"""Stage subsample: keep a random `subsample.fraction` of the prepared training pairs.

Writes data/subsampled/{train.src,train.tgt,stats.json} whole or not at all.
Val and test are not copied: later stages read them from data/prepared/.
"""
from __future__ import annotations

import logging

from nmt import errors, fsio, params, paths
from nmt.subsampling import subsample

log = logging.getLogger("nmt")


@errors.main_entry
def main() -> None:
    p = params.load(stage="subsample")
    fsio.sweep_leftovers(paths.SUBSAMPLED)
    src, tgt, stats = subsample(paths.PREPARED, p.subsample)
    with fsio.atomic_dir(paths.SUBSAMPLED) as out:
        fsio.write_lines(out / "train.src", src)
        fsio.write_lines(out / "train.tgt", tgt)
        fsio.write_json(out / "stats.json", stats)
    log.info("kept %d of %d training pairs (fraction %g, seed %d) in %s", stats["pairs_kept"],
             stats["pairs_in"], p.subsample.fraction, p.subsample.seed, paths.SUBSAMPLED)


if __name__ == "__main__":
    main()
