"""Translate your own text with a trained model: `nmtlab translate`.

    echo "Ein Hund läuft im Park." | nmtlab translate
    nmtlab translate -i my.de -o my.en --exp gelu      # another experiment's model
    nmtlab translate -i my.de --ct2 ct2-model          # an `nmtlab export-ct2` folder

One sentence a line in, one translation a line out, in order (an empty line
gives an empty line). The model, the tokenizer and the `translate` params
(beam size, length penalty, length limits) are those of the workspace
(data/model/averaged.pt, data/prepared, params.yaml), or with --exp NAME those
of that experiment (or any git revision), read through dvc.api without
switching the workspace. Lines are normalised and decoded as the translate
stage does (nmt.corpus.normalise, nmt.translation.translate_lines), so translating
data/prepared/test.src gives data/translations/test.hyp byte for byte.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from nmt import fsio, paths
from nmt.corpus import normalise
from nmt.errors import UserError, main_entry
from nmt.params import Params, Translate, from_dict, load
from nmt.tokenizer import SHARED_MODEL, SRC_MODEL, TGT_MODEL, Tokenizers

log = logging.getLogger("nmt.translate")
MODEL = paths.MODEL / "averaged.pt"


def read_input(path: str | None) -> list[str]:
    if path is None:
        try:
            return [normalise(line) for line in sys.stdin.buffer.read().decode("utf-8").splitlines()]
        except UnicodeDecodeError as e:
            raise UserError(f"standard input: not UTF-8 (byte {e.start})") from None
    return [normalise(line) for line in fsio.read_utf8_lines(path, what="--input")]


def fetch_experiment(rev: str, into: Path) -> Path:
    """Copy params.yaml, the model and the SentencePiece model(s) of an experiment (or git
    revision) into `into`, laid out as in the workspace; return `into`."""
    import dvc.api
    from dvc.exceptions import DvcException
    from dvc.scm import RevError

    def get(path: str, required: bool = True) -> bool:
        dest = into / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with dvc.api.open(path, repo=".", rev=rev, mode="rb") as f:
                dest.write_bytes(f.read())
        except RevError:
            raise UserError(f"--exp {rev}: no such experiment or git revision here "
                            f"(`dvc exp list --all-commits` lists them)") from None
        except (FileNotFoundError, DvcException):
            if required:
                raise UserError(f"--exp {rev}: has no {path} (did its pipeline run to the "
                                f"swa-average stage?)") from None
            return False
        return True

    get("params.yaml")
    if not get(str(paths.PREPARED / SHARED_MODEL), required=False):
        get(str(paths.PREPARED / SRC_MODEL))
        get(str(paths.PREPARED / TGT_MODEL))
    get(str(MODEL))
    n = experiment_params(into).translate.ensemble
    if n > 1:  # the members nmt.ensemble.load takes
        from nmt import checkpoints

        get(str(paths.MODEL / "info.json"))
        ranked = json.loads((into / paths.MODEL / "info.json").read_text())["ranked_epochs"]
        for e in ranked[:n]:
            get(str(checkpoints.epoch_path(paths.CHECKPOINTS, e)))
    return into


def experiment_params(root: Path) -> Params:
    import yaml

    params = from_dict(yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8")) or {})
    params.validate()
    return params


def translate_with_model(root: Path, params: Params, lines: list[str], device_name: str,
                         model_path: Path | None, progress: bool) -> list[str]:
    # Imported here: they import torch, which the --ct2 path does without.
    from nmt import checkpoints, device as devices, ensemble
    from nmt.translation import translate_lines

    if not (model_path or root / MODEL).is_file():
        raise UserError(f"{model_path or MODEL}: no trained model; run the pipeline "
                        f"(`dvc repro`) first, or name one with --model or --exp")
    device = devices.pick(device_name)
    if model_path:
        model, _ = checkpoints.load_model(model_path, device)
    else:  # as the translate stage: the averaged model or translate.ensemble's members
        model, model_path = ensemble.load(root, params.translate.ensemble, device)
    tok = Tokenizers.load(root / paths.PREPARED)
    if (model.cfg.src_vocab_size, model.cfg.tgt_vocab_size) != (tok.src_vocab_size,
                                                                tok.tgt_vocab_size):
        raise UserError(f"{model_path}: made for other vocabularies than those in "
                        f"{root / paths.PREPARED}")
    return translate_lines(model, tok, lines, params.translate, device,
                           desc="translate" if progress else None)


def translate_with_ct2(folder: Path, params: Params, lines: list[str], device_name: str
                       ) -> list[str]:
    from .serving import Ct2Model

    if params.translate.ensemble > 1:
        log.warning("translate.ensemble is %d, but --ct2 decodes the one exported model",
                    params.translate.ensemble)
    model = Ct2Model(folder, device=ct2_device(device_name))
    cfg = params.translate
    if cfg.batch_sentences != Translate().batch_sentences:
        log.warning("translate.batch_sentences (%d) is the PyTorch decoder's; --ct2 batches "
                    "%d sentences (the export's serving settings, export.json)",
                    cfg.batch_sentences, model.max_batch)
    src = model.tok.encode_src(lines)
    out = model.translate_ids([ids for ids in src if ids], beam_size=cfg.beam_size,
                              length_penalty=cfg.length_penalty, max_len_a=cfg.max_len_a,
                              max_len_b=cfg.max_len_b)
    hyps = iter(out)
    return model.tok.decode_tgt([next(hyps) if ids else [] for ids in src])


def ct2_device(name: str) -> str:
    """CTranslate2's device for --device: auto is cuda when CTranslate2 sees a GPU."""
    import ctranslate2

    gpus = ctranslate2.get_cuda_device_count()
    if name == "cuda" and not gpus:
        raise UserError("--device cuda: CTranslate2 finds no CUDA device here")
    return "cuda" if name == "cuda" or (name == "auto" and gpus) else "cpu"


@main_entry
def main() -> None:
    ap = argparse.ArgumentParser(prog="nmtlab translate", description=__doc__.splitlines()[0])
    ap.add_argument("-i", "--input", help="source sentences, one a line (default: stdin)")
    ap.add_argument("-o", "--output", help="where the translations go (default: stdout)")
    ap.add_argument("--exp", metavar="NAME",
                    help="the model, tokenizer and translate params of this experiment or git "
                         "revision, read through dvc.api (default: the workspace)")
    ap.add_argument("--model", type=Path, help=f"a model file this project wrote "
                                               f"(default: {MODEL})")
    ap.add_argument("--ct2", type=Path, metavar="DIR",
                    help="translate with an `nmtlab export-ct2` folder instead (its own "
                         "tokenizer; beam and length settings from the params)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = ap.parse_args()
    if args.exp and args.model:
        raise UserError("--exp and --model: name one model, not two")
    with tempfile.TemporaryDirectory(prefix="nmtlab-translate-") as tmp:
        root = fetch_experiment(args.exp, Path(tmp)) if args.exp else Path(".")
        params = experiment_params(root) if args.exp else load()
        lines = read_input(args.input)
        if args.ct2:
            hyps = translate_with_ct2(args.ct2, params, lines, args.device)
        else:
            hyps = translate_with_model(root, params, lines, args.device, args.model,
                                        progress=args.input is not None)
    if args.output:
        fsio.write_lines(args.output, hyps)
    else:
        sys.stdout.write("".join(h + "\n" for h in hyps))
    log.info("translated %d lines", len(hyps))


if __name__ == "__main__":
    main()
