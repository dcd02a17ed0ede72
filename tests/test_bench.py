"""The benchmark's pieces on a tiny model: FLOP counting, the plain baseline, decoding."""
import torch

from nmtlab.bench import PlainTransformer, bench_decoding, model_flops
from nmt.model import ModelConfig, build
from nmt.params import Translate


class FakeTok:
    pad_id, bos_id, eos_id = 0, 2, 3


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
    result = bench_decoding(model, FakeTok(), src, Translate(), torch.device("cpu"),
                            uncached_sentences=6)
    for name in ("greedy", "beam5"):
        assert result[name]["same_output"] is True
        assert result[name]["sentences"] == 12 and result[name]["subset"] == 6
        assert result[name]["sentences_per_s"] > 0
