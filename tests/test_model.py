"""The Transformer: shapes, masking, tying, and cached decoding equal to full decoding."""
import pytest
import torch


from nmt.loss import smoothed_cross_entropy
from nmt.model import ModelConfig, build, count_parameters


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


@pytest.mark.parametrize("kernels", ["fast", "stock"])
@pytest.mark.parametrize("epsilon", [0.0, 0.1])
@pytest.mark.parametrize("tie", [True, False])
def test_forward_with_targets_is_the_loss_of_its_logits(kernels, epsilon, tie):
    """One forward for training and decoding: given tgt_out it returns the label-smoothed
    loss and NLL sums of the very logits it returns without, padding skipped, and the
    loss's gradient reaches every weight, the untied output projection included."""
    torch.manual_seed(0)
    model = build(tiny(kernels=kernels, tie_embeddings=tie)).train()
    src = torch.randint(4, 40, (3, 7))
    tgt_in, tgt_out = torch.randint(4, 40, (3, 6)), torch.randint(4, 40, (3, 6))
    tgt_out[0, 3:] = 0  # padding
    with torch.no_grad():
        ref_loss, ref_nll = smoothed_cross_entropy(model(src, tgt_in), tgt_out, epsilon, 0)
    loss, nll = model(src, tgt_in, tgt_out, label_smoothing=epsilon)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nll, ref_nll, rtol=1e-5, atol=1e-5)
    loss.backward()
    missing = [n for n, p in model.named_parameters()
               if p.grad is None and not n.endswith("positions.weight")]
    assert not missing


def test_forward_loss_head_runs_in_the_autocast_dtype(monkeypatch):
    """Under bf16 autocast the loss head's matmul is bf16 (the states stay fp32, from
    the final norm); outside autocast it is the states' dtype."""
    model = build(tiny())
    seen = []
    head = model.kernels.loss_head
    monkeypatch.setattr(model, "kernels", type(model.kernels)(
        model.kernels.dropout, model.kernels.attention,
        lambda *a, dtype, **kw: seen.append((a[0].dtype, dtype)) or head(*a, dtype=dtype, **kw)))
    src, tgt = torch.randint(4, 40, (2, 5)), torch.randint(4, 40, (2, 4))
    model(src, tgt, tgt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(src, tgt, tgt)
    assert seen == [(torch.float32, torch.float32), (torch.float32, torch.bfloat16)]


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
