"""The Transformer: shapes, masking, tying, and cached decoding equal to full decoding."""
import pytest
import torch

from stages.model import ModelConfig, build, count_parameters


def tiny(**kw) -> ModelConfig:
    base = dict(src_vocab_size=40, tgt_vocab_size=40, d_model=32, nhead=4, dim_feedforward=64,
                num_encoder_layers=2, num_decoder_layers=2, dropout=0.0)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu"])
@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_cached_decoding_equals_full_decoder(activation, norm_first, positional):
    torch.manual_seed(0)
    model = build(tiny(activation=activation, norm_first=norm_first, positional=positional)).eval()
    src = torch.randint(4, 40, (3, 7))
    src[0, 4:] = 0  # padding
    tgt = torch.randint(4, 40, (3, 6))
    full = model(src, tgt)
    memory, mask = model.encode(src)
    cache = model.start_decoding(memory, mask, max_len=10)
    steps = torch.stack([model.decode_step(tgt[:, i], cache) for i in range(6)], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_outputs():
    torch.manual_seed(0)
    model = build(tiny()).eval()
    src = torch.randint(4, 40, (1, 5))
    tgt = torch.randint(4, 40, (1, 4))
    padded = torch.cat([src, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(src, tgt), model(padded, tgt), atol=1e-5, rtol=1e-5)


def test_decoder_is_causal():
    torch.manual_seed(0)
    model = build(tiny()).eval()
    src = torch.randint(4, 40, (2, 5))
    tgt = torch.randint(4, 40, (2, 6))
    changed = tgt.clone()
    changed[:, 4:] = 5
    torch.testing.assert_close(model(src, tgt)[:, :4], model(src, changed)[:, :4])


def test_tied_embeddings_share_one_table():
    tied = build(tiny(tie_embeddings=True, share_vocab=True))
    untied = build(tiny(tie_embeddings=False, share_vocab=True))
    assert tied.out_proj.weight is tied.tgt_embed.tokens.weight is tied.src_embed.tokens.weight
    assert count_parameters(untied) - count_parameters(tied) == 2 * 40 * 32


def test_swiglu_keeps_parameter_count_close():
    relu, swiglu = build(tiny(activation="relu")), build(tiny(activation="swiglu"))
    assert abs(count_parameters(swiglu) - count_parameters(relu)) / count_parameters(relu) < 0.02


def test_sinusoidal_positions_extend_past_table():
    model = build(tiny(max_positions=8)).eval()
    src = torch.randint(4, 40, (1, 20))
    assert model(src, src).shape == (1, 20, 40)
