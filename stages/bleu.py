"""Stage bleu: sacreBLEU corpus BLEU and chrF of the translations, as DVC metrics.

The sacreBLEU signatures go to their own file (data/bleu/signatures.json): inside the
metrics, their `|` would break `dvc exp show --md` tables.
"""
from __future__ import annotations

import logging

from nmt import fsio, paths
from nmt.errors import UserError, main_entry
from nmt.scoring import score
from nmt.params import load

log = logging.getLogger("nmt.bleu")


@main_entry
def main() -> None:
    params = load(stage="bleu")
    fsio.sweep_leftovers(paths.BLEU_METRICS.parent)
    result: dict = {}
    signatures: dict = {}
    for split in ("val", "test"):
        hyps = fsio.read_utf8_lines(paths.TRANSLATIONS / f"{split}.hyp")
        ref_path = paths.PREPARED / f"{split}.tgt"
        if not ref_path.exists():
            log.info("%s: no reference translation (%s): %s BLEU skipped", split, ref_path, split)
            result[split] = {"skipped": "no reference"}
            continue
        refs = fsio.read_utf8_lines(ref_path)
        if len(hyps) != len(refs):
            raise UserError(f"{paths.TRANSLATIONS / f'{split}.hyp'}: {len(hyps)} lines, but the "
                            f"reference {ref_path} has {len(refs)}")
        result[split] = score(hyps, refs, params.bleu.tokenize, params.bleu.lowercase)
        signatures[split] = {metric: result[split].pop(f"{metric}_signature")
                             for metric in ("bleu", "chrf")}
        log.info("%s: BLEU %.2f, chrF %.2f (%s)", split, result[split]["bleu"],
                 result[split]["chrf"], signatures[split]["bleu"])
    # both files or neither: one folder replaced whole
    with fsio.atomic_dir(paths.BLEU_METRICS.parent) as tmp:
        fsio.write_json(tmp / paths.BLEU_METRICS.name, result)
        fsio.write_json(tmp / paths.BLEU_SIGNATURES.name, signatures)


if __name__ == "__main__":
    main()
