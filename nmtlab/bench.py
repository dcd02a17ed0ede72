"""Benchmark: training and decoding speed on this machine, each against a plain baseline.

`make bench` (python -m nmtlab.bench) measures, in one run, on the same data
and thread count:
- training: target tokens/s of this project's train step (token-count buckets,
  bf16 autocast where it helps, fused Adam) on real Multi30k batches at the
  default model size, its padding, model FLOP/s and model FLOPs utilisation
  (MFU) against the dense matmul FLOP/s measured here; and the same step
  written the plain way a tutorial would (torch.nn.Transformer, 128-sentence
  batches in random order, fp32), with the ratio;
- decoding: sentences/s on the test set, greedy and beam 5 (the other settings
  from params.yaml's `translate`), with the decoder's key/value cache and with
  the recompute-the-prefix baseline (best of two alternating runs each), same
  outputs;
- with --compile (default on CUDA only), the train step under torch.compile too.
It prints a table and writes reports/bench.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from nmt import checkpoints, device as devices, fsio, paths, training
from nmt.batching import Batch, collate, epoch_order, padding_fraction
from nmt.errors import UserError, main_entry
from nmt.model import ModelConfig, Seq2SeqTransformer, count_parameters, sinusoidal_table
from nmt.params import Params, Translate, load
from nmt.search import translate_all
from nmt.tokenizer import SpecialIds
from nmt.trainer import Trainer

from . import ct2

log = logging.getLogger("nmt.bench")
OUT = Path("reports") / "bench.json"


def matmul_peak(device: torch.device, dtype: torch.dtype, repeats: int = 3) -> float:
    """The machine's practical peak for this dtype: the best of `repeats` one-second
    measurements of matmul_flops. On a shared machine one measurement can come out far
    below the others, and the MFU with it far above (docs/speed.md); the best of several
    is robust to a slow second."""
    return max(matmul_flops(device, dtype) for _ in range(repeats))


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 2048,
                 seconds: float = 1.0) -> float:
    """Dense n x n x n matmul FLOP/s, measured for `seconds`."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_flops(cfg: ModelConfig, src_lens: list[int], tgt_lens: list[int]) -> float:
    """Matmul FLOPs of one training step (forward + backward = 3 x forward) on real tokens.

    Per token and layer: projections 2*(4 d^2) (+ 2*(2 d^2) for cross-attention
    queries/outputs, keys/values per source token), feed-forward 2*(2 d f) (3 matrices
    of 2/3 f for SwiGLU: the same), attention scores and values 4 d L; plus the
    output projection 2 d V per target token.
    """
    d, f, v = cfg.d_model, cfg.dim_feedforward, cfg.tgt_vocab_size
    fwd = 0.0
    for s, t in zip(src_lens, tgt_lens):
        enc = s * (8 * d * d + 4 * d * f + 4 * d * s)
        dec = t * (8 * d * d + 4 * d * d + 4 * d * f + 4 * d * t + 4 * d * s) + s * 4 * d * d
        fwd += cfg.num_encoder_layers * enc + cfg.num_decoder_layers * dec + t * 2 * d * v
    return 3 * fwd


class PlainTransformer(nn.Module):
    """The tutorial way: torch.nn.Transformer, separate embeddings, a Linear generator."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.src_emb = nn.Embedding(cfg.src_vocab_size, d)
        self.tgt_emb = nn.Embedding(cfg.tgt_vocab_size, d)
        self.register_buffer("pos", sinusoidal_table(1024, d))
        self.transformer = nn.Transformer(d, cfg.nhead, cfg.num_encoder_layers,
                                          cfg.num_decoder_layers, cfg.dim_feedforward,
                                          cfg.dropout, batch_first=True)
        self.generator = nn.Linear(d, cfg.tgt_vocab_size)
        self.scale = math.sqrt(d)
        self.pad = cfg.pad_id

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        t = tgt_in.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=src.device)
        h = self.transformer(self.src_emb(src) * self.scale + self.pos[:src.shape[1]],
                             self.tgt_emb(tgt_in) * self.scale + self.pos[:t],
                             tgt_mask=causal, src_key_padding_mask=src == self.pad,
                             tgt_key_padding_mask=tgt_in == self.pad,
                             memory_key_padding_mask=src == self.pad)
        return self.generator(h)


def time_steps(step, batches, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step, averaged over `steps` batches after `warmup` untimed ones, in the
    steady state of a training run: each timed batch has run once before, untimed, so
    its shape's kernels exist (oneDNN builds one per bf16 matmul shape, and a run builds
    them all in its first epoch; docs/speed.md)."""
    for b in batches[:warmup] + batches[warmup:warmup + steps]:
        step(b)
    sync(device)
    start = time.perf_counter()
    for b in batches[warmup:warmup + steps]:
        step(b)
    sync(device)
    return (time.perf_counter() - start) / steps


def bench_compiled(params: Params, cfg: ModelConfig, batches: list, steps: int, warmup: int,
                   device: torch.device, eager_tps: float) -> dict:
    """The same train step under torch.compile (train.compile: true): seconds spent in the
    warm-up steps, where compilation happens, and steady-state tokens/s against eager."""
    compiled = dataclasses.replace(params, train=dataclasses.replace(params.train, compile=True))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(compiled, cfg, batches, batches[:1], Path(tmp) / "state", "bench",
                          device=device)
        start = time.perf_counter()
        for b in batches[:warmup]:
            trainer.train_step([b])
        sync(device)
        warmup_s = time.perf_counter() - start
        per_step = time_steps(lambda b: trainer.train_step([b]), batches[warmup:], steps, 0,
                              device)
    tokens = sum(b.n_tgt_tokens for b in batches[warmup:warmup + steps])
    tps = tokens / (per_step * steps)
    return {"compiled_tokens_per_s": round(tps, 1), "compile_warmup_steps": warmup,
            "compile_warmup_seconds": round(warmup_s, 1),
            "compile_speedup": round(tps / eager_tps, 2)}


def bench_training(params: Params, run: training.TrainingSetup, steps: int,
                   compile_: bool = False) -> dict:
    """This project's train step against the plain one, on `run`'s batches (the train
    stage's, in a fixed shuffled order) and pairs."""
    special, device = run.tok.special, run.device
    ours = list(run.train_batches)
    random.Random(0).shuffle(ours)
    warmup = 3
    dtype = torch.bfloat16 if devices.use_bf16(params.train.amp, device) else torch.float32
    peak_before = matmul_peak(device, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(params, run.cfg, ours, ours[:1], Path(tmp) / "state", "bench",
                          device=device)
        per_step = time_steps(lambda b: trainer.train_step([b]), ours, steps, warmup, device)
    timed = ours[warmup:warmup + steps]
    tokens = sum(b.n_tgt_tokens for b in timed)
    src_lens = [int(n) for b in timed for n in (b.src != special.pad).sum(1)]
    tgt_lens = [int(n) for b in timed for n in (b.tgt_out != special.pad).sum(1)]
    flops = model_flops(run.cfg, src_lens, tgt_lens) / (per_step * steps)
    peak = max(peak_before, matmul_peak(device, dtype))  # before and after the steps
    ours_tps = tokens / (per_step * steps)
    plain = bench_plain(params, run, steps, tokens, warmup)
    # Compiled, when asked: warm-up over 10 batch shapes (dynamic shapes compile once or
    # twice), timed on batches after them.
    compiled = (bench_compiled(params, run.cfg, ours, steps, 10, device, ours_tps)
                if compile_ else {})
    return {
        "parameters": count_parameters(trainer.model),
        "bf16": trainer.bf16,
        "tokens_per_s": round(ours_tps, 1),
        "padding": round(padding_fraction(timed, special.pad), 4),
        "model_tflops": round(flops / 1e12, 4),
        "matmul_peak_tflops": round(peak / 1e12, 4),
        "matmul_peak_dtype": str(dtype).replace("torch.", ""),
        "mfu": round(flops / peak, 4),
        **plain,
        "speedup": round(ours_tps / plain["plain_tokens_per_s"], 2),
        "steps_timed": steps,
        "peak_memory_mb": round(devices.peak_memory_mb(device), 1),
        **compiled,
    }


def bench_plain(params: Params, run: training.TrainingSetup, steps: int, tokens: int,
                warmup: int) -> dict:
    """The plain baseline: fixed 128-sentence batches in corpus order, fp32, no buckets,
    timed over as many target tokens as `steps` of ours trained (`tokens`)."""
    src, tgt = run.train_pairs
    device = run.device
    order = list(range(len(src)))
    random.Random(0).shuffle(order)
    batches = [collate([(src[i], tgt[i]) for i in order[k:k + 128]], run.tok.special)
               for k in range(0, len(order), 128)]
    torch.manual_seed(params.seed)
    plain = PlainTransformer(run.cfg).to(device).train()
    opt = torch.optim.Adam(plain.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    loss_fn = nn.CrossEntropyLoss(ignore_index=run.tok.special.pad, label_smoothing=0.1)

    def plain_step(b):
        b = b.to(device)
        logits = plain(b.src, b.tgt_in)
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), b.tgt_out.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()

    n_plain = max(3, round(steps * tokens / sum(b.n_tgt_tokens for b in batches[:steps])))
    per_step = time_steps(plain_step, batches, n_plain, warmup, device)
    timed = batches[warmup:warmup + n_plain]
    tokens_per_s = sum(b.n_tgt_tokens for b in timed) / (per_step * n_plain)
    return {"plain_parameters": count_parameters(plain),
            "plain_tokens_per_s": round(tokens_per_s, 1),
            "plain_padding": round(padding_fraction(timed, run.tok.special.pad), 4)}


def bench_sustained(params: Params, cfg: ModelConfig, batches: Sequence[Batch],
                    device: torch.device, steps: int, window: int = 100) -> dict:
    """Training speed over a long run: `steps` train steps on `batches` (the train stage's,
    of all the given pairs), in the trainer's shuffled epoch orders, one process from a
    fresh model.
    Tokens/s of the first `window` steps against the last `window`, and the process's RSS
    after each. The last window replays the first window's batches in the same order, so
    the two differ only in what the steps between did to the process (kernel caches,
    memory), not in their sentence lengths."""
    import psutil

    steps = max(steps, 2 * window)
    order = [i for epoch in range(1, steps // len(batches) + 2)
             for i in epoch_order(len(batches), params.seed, epoch)][:steps - window]
    order += order[:window]
    proc = psutil.Process()
    windows = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(params, cfg, batches, batches[:1], Path(tmp) / "state", "bench",
                          device=device)
        for start in tqdm(range(0, steps, window), desc="sustained", unit="window",
                          disable=None):
            ids = order[start:start + window]
            sync(device)
            t0 = time.perf_counter()
            for i in ids:
                trainer.train_step([batches[i]])
            sync(device)
            tokens = sum(batches[i].n_tgt_tokens for i in ids)
            windows.append({"steps": f"{start + 1}-{start + len(ids)}",
                            "tokens_per_s": round(tokens / (time.perf_counter() - t0), 1),
                            "rss_mb": round(proc.memory_info().rss / 2**20, 1)})
    first, last = windows[0], windows[-1]
    shapes = {(b.src.shape, b.tgt_out.shape) for b in batches}
    return {"steps": len(order), "batches": len(batches), "batch_shapes": len(shapes),
            "first_tokens_per_s": first["tokens_per_s"], "last_tokens_per_s": last["tokens_per_s"],
            "last_vs_first": round(last["tokens_per_s"] / first["tokens_per_s"], 3),
            "first_rss_mb": first["rss_mb"], "last_rss_mb": last["rss_mb"],
            "onednn_cache_capacity": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "1024"),
            "windows": windows}


def decode_rate(model, special: SpecialIds, src: list, cfg: Translate, cache: bool,
                device) -> tuple[float, list]:
    start = time.perf_counter()
    out = translate_all(model, src, cfg, special=special, device=device, use_cache=cache)
    sync(device)
    return len(src) / (time.perf_counter() - start), out


def bench_decoding(model, special: SpecialIds, src: list, translate: Translate, device,
                   uncached_sentences: int, repeats: int = 2) -> dict:
    """Greedy and beam 5 with the other `translate` params as configured. Cached and
    uncached decoding of the subset alternate `repeats` times; each keeps its best
    rate, so a slow moment of the machine hits neither side alone."""
    result = {}
    subset = src[:uncached_sentences]
    for beam in (1, 5):
        name = "greedy" if beam == 1 else f"beam{beam}"
        cfg = dataclasses.replace(translate, beam_size=beam)
        full_rate, _ = decode_rate(model, special, src, cfg, True, device)
        cached_rate = plain_rate = 0.0
        for _ in range(repeats):
            rate, cached = decode_rate(model, special, subset, cfg, True, device)
            cached_rate = max(cached_rate, rate)
            rate, plain = decode_rate(model, special, subset, cfg, False, device)
            plain_rate = max(plain_rate, rate)
        result[name] = {
            "sentences_per_s": round(full_rate, 2),
            "sentences": len(src),
            "subset": len(subset),
            "subset_cached_sentences_per_s": round(cached_rate, 2),
            "subset_uncached_sentences_per_s": round(plain_rate, 2),
            "speedup": round(cached_rate / plain_rate, 2),
            "same_output": cached == plain,
        }
    return result


def print_table(r: dict) -> None:
    t = r["training"]
    rows = [
        ("device", r["device"]),
        ("train: tokens/s (this project)", f"{t['tokens_per_s']:.0f}  (bf16 {t['bf16']})"),
        ("train: tokens/s (plain nn.Transformer)", f"{t['plain_tokens_per_s']:.0f}"),
        ("train: speed-up", f"{t['speedup']:.2f}x"),
        ("train: padding (project / plain)", f"{t['padding']:.1%} / {t['plain_padding']:.1%}"),
        ("train: model TFLOP/s", f"{t['model_tflops']:.3f}"),
        (f"matmul peak TFLOP/s ({t['matmul_peak_dtype']})", f"{t['matmul_peak_tflops']:.3f}"),
        ("train: MFU", f"{t['mfu']:.1%}"),
        ("train: peak memory MB", f"{t['peak_memory_mb']:.0f}"),
    ]
    if "compiled_tokens_per_s" in t:
        rows += [
            ("train: tokens/s with torch.compile", f"{t['compiled_tokens_per_s']:.0f}  "
             f"({t['compile_speedup']:.2f}x eager)"),
            (f"train: compile warm-up ({t['compile_warmup_steps']} steps), s",
             f"{t['compile_warmup_seconds']:.0f}"),
        ]
    if s := r.get("sustained"):
        rows += [
            (f"train sustained: tokens/s, steps 1-100 vs last 100 of {s['steps']}",
             f"{s['first_tokens_per_s']:.0f} vs {s['last_tokens_per_s']:.0f} = "
             f"{s['last_vs_first']:.1%}  ({s['batch_shapes']} batch shapes)"),
            ("train sustained: RSS MB after first / last 100", f"{s['first_rss_mb']:.0f} / "
             f"{s['last_rss_mb']:.0f}"),
        ]
    for name, d in r["decoding"].items():
        rows.append((f"decode {name}: sentences/s ({d['sentences']} sent., cached)",
                     f"{d['sentences_per_s']:.1f}"))
        rows.append((f"decode {name}: cached vs uncached ({d['subset']} sent.)",
                     f"{d['subset_cached_sentences_per_s']:.1f} vs "
                     f"{d['subset_uncached_sentences_per_s']:.1f} = {d['speedup']:.2f}x, "
                     f"same output: {d['same_output']}"))
    for name, d in r.get("beam5_ct2", {}).items():
        rows.append((f"beam 5, {name}: sentences/s, test BLEU",
                     f"{d['sentences_per_s']:.1f}, BLEU {d['bleu']}  "
                     f"(same output as pytorch: {d['same_as_pytorch']:.1%})"))
    rows.append(("decode model", r["decode_model"]))
    rows.append(("bench seconds", f"{r['seconds']:.0f}"))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


@main_entry
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="training steps timed per variant")
    ap.add_argument("--uncached-sentences", type=int, default=200,
                    help="test sentences decoded by both the cached and the uncached decoder")
    ap.add_argument("--sustained-steps", type=int, default=600,
                    help="train steps of the sustained row (0 = skip it; about 10 minutes on "
                         "2 CPU cores)")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                    help="also time the train step under torch.compile; auto: on CUDA only "
                         "(on this 2-core CPU it compiled for 140 s and then ran slower)")
    args = ap.parse_args()
    start = time.perf_counter()
    params = load()
    if not (paths.PREPARED / "train.src").exists():
        raise UserError(f"{paths.PREPARED}: not there yet; run `dvc repro prepare` first")
    # As the train stage sets up, on all the prepared training pairs.
    run = training.setup(params, (paths.PREPARED / "train.src", paths.PREPARED / "train.tgt"))
    device = run.device
    log.info("training benchmark: %d steps per variant on %s", args.steps,
             devices.describe(device))
    compile_ = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    result = {"device": devices.describe(device), "torch": torch.__version__,
              "threads": torch.get_num_threads(),
              "training": bench_training(params, run, args.steps, compile_)}
    if args.sustained_steps:
        log.info("sustained training: %d steps on all training pairs", args.sustained_steps)
        result["sustained"] = bench_sustained(params, run.cfg, run.train_batches, device,
                                              args.sustained_steps)
    result.update(bench_model_decoding(params, run, args.uncached_sentences))
    result["seconds"] = round(time.perf_counter() - start, 1)
    fsio.write_json(OUT, result)
    print_table(result)


def bench_model_decoding(params: Params, run: training.TrainingSetup,
                         uncached_sentences: int) -> dict:
    """Decoding rows of the trained model (an untrained one where there is none yet), and
    its CTranslate2 exports beside ours."""
    device, tok = run.device, run.tok
    model_path = paths.MODEL / "averaged.pt"
    if model_path.exists():
        model, _ = checkpoints.load_model(model_path, device)
        decode_model = f"{model_path} (trained)"
    else:
        model = Seq2SeqTransformer(run.cfg).to(device).eval()
        decode_model = "untrained (no data/model/averaged.pt): outputs run to the length limit"
    test_src = tok.encode_src(fsio.read_utf8_lines(paths.PREPARED / "test.src"))
    log.info("decoding benchmark on %d test sentences", len(test_src))
    result = {"decoding": bench_decoding(model, tok.special, test_src, params.translate, device,
                                         uncached_sentences),
              "decode_model": decode_model}
    if model_path.exists():
        log.info("beam 5: this project's search against CTranslate2 float32 and int8")
        refs_path = paths.PREPARED / "test.tgt"  # absent when the test references are hidden
        refs = fsio.read_utf8_lines(refs_path) if refs_path.exists() else None
        result["beam5_ct2"] = ct2.bench(model, model_path, tok, test_src, refs,
                                        params.translate, device)
    return result

if __name__ == "__main__":
    main()
