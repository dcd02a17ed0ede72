"""CTranslate2: export a trained model (`nmtlab export-ct2`), and the serving bench.

`nmtlab export-ct2 [--model data/model/averaged.pt] --out DIR --quantization float32|int8`
builds a CTranslate2 model through its specification API (`ctranslate2.specs`)
from the weights as they are: fused q/k/v and k/v projections, pre- or
post-norm, ReLU, GELU or SwiGLU, tied or separate embeddings, sinusoidal or
learned positions (our own table is written, not CTranslate2's sinusoids,
which differ). DIR gets model.bin, config.json, the vocabulary, the
SentencePiece model(s) of data/prepared and export.json (where it came from),
so `nmtlab translate --ct2 DIR` needs nothing else.

Translating with the export (`Ct2Model`, torch-free) is in nmtlab/serving.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nmt import checkpoints, fsio, paths
from nmt.errors import UserError, main_entry
from nmt.model import Seq2SeqTransformer
from nmt.scoring import score
from nmt.search import translate_all
from nmt.tokenizer import SHARED_MODEL, SRC_MODEL, TGT_MODEL, Tokenizers

from .serving import CPU_SERVING, INFO, Ct2Model, pieces

log = logging.getLogger("nmt.ct2")
QUANTIZATIONS = ("float32", "int8")
SINUSOID_ROWS = 1024  # positions written for sinusoidal models: sources and outputs up to 1023 tokens


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _linear(spec, layer: torch.nn.Linear) -> None:
    spec.weight = _np(layer.weight)  # (out, in), as CTranslate2 stores it
    if layer.bias is not None:
        spec.bias = _np(layer.bias)


def _norm(spec, norm: torch.nn.LayerNorm) -> None:
    spec.gamma = _np(norm.weight)
    spec.beta = _np(norm.bias)


def _ffn(spec, ffn) -> None:
    if ffn.activation.gated:  # fn(gate(x)) * up(x): linear_0 is the activated branch
        _linear(spec.linear_0, ffn.gate)
        _linear(spec.linear_0_noact, ffn.up)
    else:
        _linear(spec.linear_0, ffn.up)
    _linear(spec.linear_1, ffn.down)


def position_rows(model: Seq2SeqTransformer) -> int:
    """Positions the exported model has: a source (with its end token) or an output can be
    at most this long."""
    learned = model.src_embed.positions.max_length  # None: sinusoids, any length
    return learned or max(SINUSOID_ROWS, model.cfg.max_positions)


def _positions(embed, rows: int) -> np.ndarray:
    """Our own table (CTranslate2's built-in sinusoids are laid out differently)."""
    return _np(embed.positions(0, rows, torch.device("cpu")))


def build_spec(model: Seq2SeqTransformer, src_vocab: list[str], tgt_vocab: list[str]):
    """The CTranslate2 TransformerSpec of `model` (validated, not yet optimised)."""
    from ctranslate2.specs import common_spec, transformer_spec

    cfg = model.cfg
    activations = {"relu": common_spec.Activation.RELU, "gelu": common_spec.Activation.GELU,
                   "swiglu": common_spec.Activation.SWISH}  # F.gelu is the erf form, as GELU
    if cfg.activation not in activations:
        raise UserError(f"model.activation: {cfg.activation!r} has no CTranslate2 equivalent; "
                        f"export supports {', '.join(activations)}")
    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.num_encoder_layers, cfg.num_decoder_layers), cfg.nhead, pre_norm=cfg.norm_first,
        activation=activations[cfg.activation],
        ffn_glu=model.encoder[0].ffn.block.activation.gated)
    rows = position_rows(model)
    enc, dec = spec.encoder, spec.decoder
    scale = float(model.src_embed.scale)  # sqrt(d_model)
    enc.embeddings[0].weight = _np(model.src_embed.tokens.weight)
    enc.scale_embeddings = scale
    enc.position_encodings.encodings = _positions(model.src_embed, rows)
    for layer_spec, layer in zip(enc.layer, model.encoder):
        _norm(layer_spec.self_attention.layer_norm, layer.self_attn.norm)
        _linear(layer_spec.self_attention.linear[0], layer.self_attn.block.qkv_proj)  # [q;k;v]
        _linear(layer_spec.self_attention.linear[1], layer.self_attn.block.out_proj)
        _norm(layer_spec.ffn.layer_norm, layer.ffn.norm)
        _ffn(layer_spec.ffn, layer.ffn.block)
    dec.embeddings.weight = _np(model.tgt_embed.tokens.weight)
    dec.scale_embeddings = scale
    dec.position_encodings.encodings = _positions(model.tgt_embed, rows)
    for layer_spec, layer in zip(dec.layer, model.decoder):
        _norm(layer_spec.self_attention.layer_norm, layer.self_attn.norm)
        _linear(layer_spec.self_attention.linear[0], layer.self_attn.block.qkv_proj)
        _linear(layer_spec.self_attention.linear[1], layer.self_attn.block.out_proj)
        cross = layer.cross_attn.block
        _norm(layer_spec.attention.layer_norm, layer.cross_attn.norm)
        _linear(layer_spec.attention.linear[0], cross.q_proj)
        _linear(layer_spec.attention.linear[1], cross.kv_proj)  # [k;v]
        _linear(layer_spec.attention.linear[2], cross.out_proj)
        _norm(layer_spec.ffn.layer_norm, layer.ffn.norm)
        _ffn(layer_spec.ffn, layer.ffn.block)
    if cfg.norm_first:  # post-norm stacks have no final norm (and the spec none either)
        _norm(enc.layer_norm, model.enc_norm)
        _norm(dec.layer_norm, model.dec_norm)
    dec.projection.weight = _np(model.out_proj.weight)
    spec.register_source_vocabulary(src_vocab)
    spec.register_target_vocabulary(tgt_vocab)
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = tgt_vocab[1:4]
    spec.config.decoder_start_token = tgt_vocab[2]
    spec.config.add_source_bos = False
    spec.config.add_source_eos = True  # as nmt.search appends eos to each source
    spec.config.layer_norm_epsilon = model.encoder[0].self_attn.norm.eps
    spec.validate()
    return spec


def export(model_path: Path, prepared: Path, out: Path, quantization: str) -> None:
    """Write the CTranslate2 model of `model_path` (with the tokenizer of `prepared`) to `out`."""
    if quantization not in QUANTIZATIONS:
        raise UserError(f"--quantization: choose one of {', '.join(QUANTIZATIONS)}")
    model, info = checkpoints.load_model(model_path)
    tok = Tokenizers.load(prepared)
    if (model.cfg.src_vocab_size, model.cfg.tgt_vocab_size) != (tok.src_vocab_size,
                                                                tok.tgt_vocab_size):
        raise UserError(f"{model_path}: made for other vocabularies than those in {prepared}")
    spec = build_spec(model, pieces(tok.src), pieces(tok.tgt))
    spec.optimize(quantization=quantization)
    with fsio.atomic_dir(out) as tmp:
        spec.save(str(tmp))
        for name in (SHARED_MODEL, SRC_MODEL, TGT_MODEL):
            for suffix in (".model", ".vocab"):
                f = prepared / Path(name).with_suffix(suffix).name
                if f.is_file():
                    shutil.copy(f, tmp / f.name)
        fsio.write_json(tmp / INFO, {
            "model": str(model_path), "model_sha256": fsio.sha256_file(model_path),
            "model_info": info, "quantization": quantization,
            "position_rows": position_rows(model), "serving": CPU_SERVING})
    log.info("wrote %s (%s, %.1f MB)", out, quantization,
             sum(f.stat().st_size for f in out.iterdir()) / 1e6)


def bench(model, model_path: Path, tok: Tokenizers, src: list[list[int]],
          refs: list[str] | None, translate, device, repeats: int = 2) -> dict:
    """Beam-5 sentences/s and test BLEU of this project's cached beam search and of the
    CTranslate2 float32 and int8 exports of the same model, on the same sentences, with
    the same threads (best of `repeats` alternating runs each). For `make bench`."""
    cfg = dataclasses.replace(translate, beam_size=5)
    settings = dict(beam_size=5, length_penalty=cfg.length_penalty, max_len_a=cfg.max_len_a,
                    max_len_b=cfg.max_len_b)
    kept = [ids for ids in src if ids]
    runners = {"pytorch": lambda: translate_all(model, kept, cfg, special=tok.special,
                                                 device=device)}
    ct2_device = "cuda" if torch.device(device).type == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        for q in QUANTIZATIONS:
            export(model_path, paths.PREPARED, Path(tmp) / q, q)
            ct2 = Ct2Model(Path(tmp) / q, device=ct2_device)
            runners[f"ct2_{q}"] = lambda m=ct2: m.translate_ids(kept, **settings)
        best: dict[str, float] = {}
        outputs: dict[str, list[list[int]]] = {}
        for _ in range(repeats):
            for name, run in runners.items():
                start = time.perf_counter()
                outputs[name] = run()
                if ct2_device == "cuda":
                    torch.cuda.synchronize()
                best[name] = max(best.get(name, 0.0), len(kept) / (time.perf_counter() - start))
    result = {}
    refs = refs and [r for r, ids in zip(refs, src) if ids]
    for name, hyps in outputs.items():
        result[name] = {"sentences_per_s": round(best[name], 2), "sentences": len(kept),
                        "bleu": score(tok.decode_tgt(hyps), refs)["bleu"] if refs else None,
                        "same_as_pytorch": round(sum(a == b for a, b in zip(
                            hyps, outputs["pytorch"])) / len(kept), 4)}
    return result


@main_entry
def main() -> None:
    ap = argparse.ArgumentParser(
        prog="nmtlab export-ct2",
        description="Convert a trained model to a CTranslate2 model (for `nmtlab translate "
                    "--ct2` and `make bench`).")
    ap.add_argument("--model", type=Path, default=paths.MODEL / "averaged.pt",
                    help="model file this project wrote (default: %(default)s)")
    ap.add_argument("--prepared", type=Path, default=paths.PREPARED,
                    help="folder with the SentencePiece model(s) (default: %(default)s)")
    ap.add_argument("--out", type=Path, required=True, help="output folder (replaced whole)")
    ap.add_argument("--quantization", choices=QUANTIZATIONS, default="float32")
    args = ap.parse_args()
    export(args.model, args.prepared, args.out, args.quantization)


if __name__ == "__main__":
    main()
