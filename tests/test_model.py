"""The Transformer: shapes, masking, tying, and cached decoding equal to full decoding."""
import pytest
import torch

import torch.nn.functional as F

from nmt.model import ModelConfig, build, count_parameters, cpu_dropout, explicit_attention


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


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_cpu_dropout_drops_p_and_rescales_the_rest(p):
    torch.manual_seed(0)
    x = torch.ones(400, 500, requires_grad=True)
    y = cpu_dropout(x, p)
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(p, abs=0.005)
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - p)))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient passes exactly where y kept x


def test_cpu_dropout_scales_bf16_by_the_exact_factor():
    """Kept bf16 values are scaled by 1 / (1 - p) on average, forward and backward: each
    product is rounded once (was: the scale itself rounded to bf16, 1.109375 for p 0.1)."""
    torch.manual_seed(0)
    p = 0.1
    x = (torch.rand(200_000) + 1).bfloat16().requires_grad_()
    y = cpu_dropout(x, p)
    upstream = (torch.rand(200_000) + 1).bfloat16()
    y.backward(upstream)
    kept = y.detach() != 0
    forward_scale = (y.detach()[kept].float() / x.detach()[kept].float()).mean().item()
    backward_scale = (x.grad[kept].float() / upstream[kept].float()).mean().item()
    assert forward_scale == pytest.approx(1 / (1 - p), abs=1e-4)
    assert backward_scale == pytest.approx(1 / (1 - p), abs=1e-4)


def test_cpu_dropout_follows_the_torch_seed():
    x = torch.ones(1000)
    torch.manual_seed(5)
    a = cpu_dropout(x, 0.2)
    torch.manual_seed(5)
    assert torch.equal(a, cpu_dropout(x, 0.2))
    assert not torch.equal(a, cpu_dropout(x, 0.2))


@pytest.mark.parametrize("causal", [False, True])
def test_explicit_attention_equals_sdpa_with_gradients(causal):
    torch.manual_seed(3)
    q, k, v = (torch.randn(3, 2, 6, 8, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    mask = torch.ones(3, 1, 1, 6, dtype=torch.bool)
    mask[1, ..., 4:] = False
    y = explicit_attention(q, k, v, mask, causal, 0.0)
    grads = torch.autograd.grad(y.square().sum(), (q, k, v))
    full = mask & torch.ones(6, 6, dtype=torch.bool).tril() if causal else mask
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=full)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    assert torch.allclose(y, ref, atol=1e-10)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-10)


def test_grouped_cache_equals_memory_repeated_per_beam():
    """Beams of a sentence share one copy of its memory (group=k) and give the same
    logits as k repeated copies, also after reordering rows and dropping a sentence."""
    torch.manual_seed(4)
    model = build(tiny()).eval()
    src = torch.randint(4, 40, (3, 7))
    src[1, 5:] = 0
    k = 2
    memory, mask = model.encode(src)
    grouped = model.start_decoding(memory, mask, max_len=6, group=k)
    repeated = model.start_decoding(memory.repeat_interleave(k, 0),
                                    mask.repeat_interleave(k, 0), max_len=6)
    tokens = torch.randint(4, 40, (3 * k,))
    for step in range(4):
        a, b = model.decode_step(tokens, grouped), model.decode_step(tokens, repeated)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        if step == 1:  # swap the beams of sentence 0, drop sentence 1
            rows = torch.tensor([1, 0, 4, 5])
            grouped.select(rows, sentences=torch.tensor([0, 2]))
            repeated.select(rows, sentences=rows)
            tokens = tokens[rows]
