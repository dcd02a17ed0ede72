"""Stage bleu: sacreBLEU corpus BLEU and chrF of the translations, as DVC metrics.

The sacreBLEU signatures go to their own file (data/bleu/signatures.json): inside the
metrics, their `|` would break `dvc exp show --md` tables.
"""
from __future__ import annotations

from nmt import fsio, paths
from nmt.errors import main_entry
from nmt.params import load
from nmt.scoring import score_splits


@main_entry
def main() -> None:
    params = load(stage="bleu")
    fsio.sweep_leftovers(paths.BLEU_METRICS.parent)
    result, signatures = score_splits(("val", "test"), paths.TRANSLATIONS, paths.PREPARED,
                                      params.bleu.tokenize, params.bleu.lowercase)
    # both files or neither: one folder replaced whole
    with fsio.atomic_dir(paths.BLEU_METRICS.parent) as tmp:
        fsio.write_json(tmp / paths.BLEU_METRICS.name, result)
        fsio.write_json(tmp / paths.BLEU_SIGNATURES.name, signatures)


if __name__ == "__main__":
    main()
