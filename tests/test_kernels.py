"""model.kernels (nmt/kernels.py): the hand-written training kernels (fast) against
PyTorch's stock functions.

Each fast kernel computes its stock function. Both paths compute the same model: with
dropout off they give the same loss and gradients. And each path really runs its own
kernels: stock calls F.dropout, F.scaled_dot_product_attention and F.cross_entropy and
none of the hand-written ones.
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from nmt import kernels as K, loss as L, model as M, params as P
from nmt.batching import collate
from nmt.tokenizer import SpecialIds
from nmt.trainer import Trainer

V = 30


def cfg(kernels: str, dropout: float = 0.0) -> M.ModelConfig:
    return M.ModelConfig(src_vocab_size=V, tgt_vocab_size=V, d_model=32, nhead=4,
                         dim_feedforward=64, num_encoder_layers=2, num_decoder_layers=2,
                         dropout=dropout, attention_dropout=dropout, kernels=kernels)


def batch(seed: int = 0):
    rng = random.Random(seed)
    data = []
    for _ in range(8):
        s = [rng.randrange(4, V) for _ in range(rng.randint(2, 9))]
        data.append((s, s[::-1]))
    return collate(data, SpecialIds())  # padded sources and targets


def loss_and_grads(kernels: str, epsilon: float):
    torch.manual_seed(0)
    model = M.build(cfg(kernels)).train()
    b = batch()
    loss, nll = model(b.src, b.tgt_in, b.tgt_out, label_smoothing=epsilon)
    loss.backward()
    return loss.item(), nll.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_fast_and_stock_give_the_same_loss_and_gradients(epsilon):
    fast, stock = (loss_and_grads(k, epsilon) for k in ("fast", "stock"))
    assert fast[0] == pytest.approx(stock[0], rel=1e-5)
    assert fast[1] == pytest.approx(stock[1], rel=1e-5)
    assert fast[2].keys() == stock[2].keys()
    for name in fast[2]:
        torch.testing.assert_close(fast[2][name], stock[2][name], rtol=1e-4, atol=1e-6,
                                   msg=lambda m: f"{name}: {m}")


def counting(calls: dict, name: str, fn):
    def wrapper(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        return fn(*args, **kwargs)
    return wrapper


def refusing(name: str):
    def wrapper(*args, **kwargs):
        raise AssertionError(f"{name} called")
    return wrapper


STOCK = {"dropout": (F, "dropout"), "sdpa": (F, "scaled_dot_product_attention"),
         "cross_entropy": (F, "cross_entropy")}
FAST = {"cpu_dropout": (K, "cpu_dropout"), "explicit_attention": (K, "explicit_attention"),
        "fused_loss": (L._LinearCrossEntropy, "apply")}


@pytest.mark.parametrize("kernels, used, unused", [("stock", STOCK, FAST),
                                                   ("fast", FAST, STOCK)])
def test_each_path_trains_with_its_own_kernels(kernels, used, unused, tmp_path, monkeypatch):
    """One real training step (Trainer.train_step, dropout 0.1, label smoothing 0.1, CPU):
    the path's functions run, the other path's never do."""
    calls: dict[str, int] = {}
    for name, (owner, attr) in used.items():
        monkeypatch.setattr(owner, attr, counting(calls, name, getattr(owner, attr)))
    for name, (owner, attr) in unused.items():
        monkeypatch.setattr(owner, attr, refusing(name))
    p = P.from_dict({"model": {"d_model": 32, "nhead": 4, "dim_feedforward": 64,
                               "num_encoder_layers": 1, "num_decoder_layers": 1, "dropout": 0.1,
                               "attention_dropout": 0.1, "kernels": kernels},
                     "loss": {"label_smoothing": 0.1},
                     "train": {"epochs": 1, "amp": "fp32"}, "schedule": {"name": "constant"}})
    p.validate()
    b = batch()
    trainer = Trainer(p, M.ModelConfig.from_params(p.model, V, V, True, 0), [b], [b],
                      tmp_path / "state", "fp")
    assert trainer.model.kernels is K.KERNELS[kernels]
    trainer.train_step([b])
    assert set(calls) == set(used), calls


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_cpu_dropout_drops_p_and_rescales_the_rest(p):
    torch.manual_seed(0)
    x = torch.ones(400, 500, requires_grad=True)
    y = K.cpu_dropout(x, p)
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
    y = K.cpu_dropout(x, p)
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
    a = K.cpu_dropout(x, 0.2)
    torch.manual_seed(5)
    assert torch.equal(a, K.cpu_dropout(x, 0.2))
    assert not torch.equal(a, K.cpu_dropout(x, 0.2))


@pytest.mark.parametrize("causal", [False, True])
def test_explicit_attention_equals_sdpa_with_gradients(causal):
    torch.manual_seed(3)
    q, k, v = (torch.randn(3, 2, 6, 8, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    mask = torch.ones(3, 1, 1, 6, dtype=torch.bool)
    mask[1, ..., 4:] = False
    y = K.explicit_attention(q, k, v, mask, causal, 0.0)
    grads = torch.autograd.grad(y.square().sum(), (q, k, v))
    full = mask & torch.ones(6, 6, dtype=torch.bool).tril() if causal else mask
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=full)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    assert torch.allclose(y, ref, atol=1e-10)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-10)
