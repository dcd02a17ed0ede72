"""The benchmark's pieces on a tiny model: FLOP counting, the plain baseline, decoding."""
import torch

from nmtlab.bench import PlainTransformer, bench_decoding, model_flops
from nmt.batching import make_batches
from nmt.model import ModelConfig, build
from nmt.params import Translate
from nmt.tokenizer import SpecialIds


def tiny() -> ModelConfig:
    return ModelConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=16, nhead=2,
                       dim_feedforward=32, num_encoder_layers=1, num_decoder_layers=1,
                       dropout=0.0)


def test_model_flops_match_a_hand_count():
    cfg = tiny()
    d, f, v = 16, 32, 30
    s, t = 5, 4
    enc = s * (8 * d * d + 4 * d * f + 4 * d * s)
    dec = t * (12 * d * d + 4 * d * f + 4 * d * t + 4 * d * s) + s * 4 * d * d
    assert model_flops(cfg, [s], [t]) == 3 * (enc + dec + t * 2 * d * v)
    assert model_flops(cfg, [s, s], [t, t]) == 2 * model_flops(cfg, [s], [t])


def test_plain_baseline_is_a_working_transformer():
    torch.manual_seed(0)
    model = PlainTransformer(tiny())
    src = torch.randint(4, 30, (3, 6))
    tgt = torch.randint(4, 30, (3, 5))
    assert model(src, tgt).shape == (3, 5, 30)


def test_cached_and_uncached_decoding_agree():
    torch.manual_seed(0)
    model = build(tiny()).eval()
    src = [[5 + i % 20, 6, 7 + i % 5] for i in range(12)]
    result = bench_decoding(model, SpecialIds(), src, Translate(), torch.device("cpu"),
                            uncached_sentences=6)
    for name in ("greedy", "beam5"):
        assert result[name]["same_output"] is True
        assert result[name]["sentences"] == 12 and result[name]["subset"] == 6
        assert result[name]["sentences_per_s"] > 0


def test_sustained_row_replays_the_first_window_at_the_end():
    """The last window trains on the first window's batches in the same order, so their
    tokens/s compare; RSS is read after each window."""
    from nmt import params as P
    from nmtlab.bench import bench_sustained

    p = P.from_dict({"model": {"d_model": 16, "nhead": 2, "dim_feedforward": 32,
                               "num_encoder_layers": 1, "num_decoder_layers": 1},
                     "train": {"amp": "fp32", "batch_tokens": 64}})
    src = [[5 + (i * 7 + k) % 20 for k in range(2 + i % 6)] for i in range(60)]
    tgt = [list(reversed(s)) for s in src]
    batches = make_batches(src, tgt, 64, SpecialIds(), seed=p.seed)
    cfg = ModelConfig.from_params(p.model, 30, 30, True, 0)
    r = bench_sustained(p, cfg, batches, torch.device("cpu"), steps=25, window=5)
    assert r["steps"] == 25 and len(r["windows"]) == 5
    assert [w["steps"] for w in r["windows"]] == ["1-5", "6-10", "11-15", "16-20", "21-25"]
    assert r["batch_shapes"] <= r["batches"] and r["batches"] >= 10
    assert r["first_rss_mb"] > 0 and r["last_rss_mb"] > 0
    assert r["last_vs_first"] == round(r["last_tokens_per_s"] / r["first_tokens_per_s"], 3)


def test_set_threads_enlarges_the_onednn_kernel_cache_unless_the_user_chose(tmp_path):
    import os
    import subprocess
    import sys

    code = ("import os; from nmt import device; device.set_threads(0); "
            "print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])")
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    run = lambda e: subprocess.run([sys.executable, "-c", code], env=e, check=True,  # noqa: E731
                                   capture_output=True, text=True).stdout.strip()
    assert run(env) == "16384"
    assert run(env | {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "300"}) == "300"
