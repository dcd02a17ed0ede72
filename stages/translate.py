"""Stage translate: the averaged model (or, with translate.ensemble > 1, an ensemble
of epoch checkpoints: nmt.ensemble) translates the val and test sources
(nmt/translation.py).

The .hyp files and stats.json appear together, and only once both splits are
translated.
"""
from __future__ import annotations

from nmt import device as devices, fsio, paths
from nmt.errors import main_entry
from nmt.params import load
from nmt.translation import translate_splits

SPLITS = ("val", "test")


@main_entry
def main() -> None:
    params = load(stage="translate")
    fsio.sweep_leftovers(paths.TRANSLATIONS)
    hyps, stats = translate_splits(params.translate, devices.pick("auto"), SPLITS)
    with fsio.atomic_dir(paths.TRANSLATIONS) as out:
        for split in SPLITS:
            fsio.write_lines(out / f"{split}.hyp", hyps[split])
        fsio.write_json(out / "stats.json", stats)


if __name__ == "__main__":
    main()
