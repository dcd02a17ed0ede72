"""The training kernels, `model.kernels`: fast (hand-written for CPU training) or stock.

A model trains with three functions that one `Kernels` names: dropout, attention and
the loss head (the output projection with the label-smoothed loss). "stock" is
PyTorch's own `F.dropout`, `F.scaled_dot_product_attention` and `F.cross_entropy`;
"fast" replaces each, on the CPU, with a version that does less work there:

- `cpu_dropout` draws a quarter of the random numbers `F.dropout` draws;
- `explicit_attention` writes softmax(q k^T / sqrt(K)) v out, whose backward beats the
  CPU flash-attention kernel of `scaled_dot_product_attention` at sentence lengths;
- `loss.linear_cross_entropy` fuses the projection and the loss over row chunks
  instead of keeping several (tokens x vocabulary) tensors.

Elsewhere (a GPU, decoding) the fast path falls back to PyTorch's fused kernels. Both
paths compute the same function (tests/test_kernels.py); docs/speed.md has the
measurements that chose them. The model reads its `Kernels` here once, through
`for_config`; the params schema checks `model.kernels` against `KERNELS`' names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import settings
from .errors import lookup
from .loss import linear_cross_entropy, stock_linear_cross_entropy


def cpu_dropout(x: Tensor, p: float) -> Tensor:
    """Inverted dropout whose mask costs a quarter of the random draws of F.dropout.

    F.dropout on the CPU draws one random float per element (bernoulli_). Here one
    64-bit draw gives four 16-bit lanes; each keeps its element when the lane is
    >= p * 65536 (p to within 1.5e-5).
    """
    n = x.numel()
    bits = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + 3) // 4,), dtype=torch.int64)
    lanes = bits.view(torch.int16)[:n].view(x.shape)
    keep = (lanes >= round(p * 65536) - 32768).to(x.dtype)
    # The scale multiplies as a Python float, in fp32 inside the kernel, so bf16 rounds
    # each product once; a bf16 scale tensor would round 1 / 0.9 to 1.109375 first.
    # Two multiplies, forward and backward: still cheaper than torch.where here.
    return x * keep * (1.0 / (1.0 - p))


def fast_dropout(x: Tensor, p: float) -> Tensor:
    """Training-mode dropout: `cpu_dropout` on the CPU, F.dropout elsewhere."""
    if p == 0.0:
        return x
    return cpu_dropout(x, p) if x.device.type == "cpu" else F.dropout(x, p, training=True)


def stock_dropout(x: Tensor, p: float) -> Tensor:
    return F.dropout(x, p, training=True)


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool,
                       p: float) -> Tensor:
    """softmax(q k^T / sqrt(K)) v written out, softmax in fp32; the fast path's CPU training
    attention, whose backward at sentence lengths is cheaper than the CPU flash kernel's."""
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if causal:
        n, m = scores.shape[-2:]
        future = torch.ones(n, m, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    wide = torch.promote_types(scores.dtype, torch.float32)  # bf16 -> fp32, fp64 stays
    probs = torch.softmax(scores.to(wide), dim=-1).to(v.dtype)
    return fast_dropout(probs, p) @ v


def stock_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool,
                    p: float) -> Tensor:
    """q (B, H, L, K), k and v (B, H, L_kv, K); mask broadcastable to (B, H, L, L_kv)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                          is_causal=causal and mask is None)


def fast_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool,
                   p: float) -> Tensor:
    """explicit_attention when training on the CPU; elsewhere (GPU, decoding)
    scaled_dot_product_attention's fused kernels."""
    if q.device.type == "cpu" and torch.is_grad_enabled():
        return explicit_attention(q, k, v, mask, causal, p)
    return stock_attention(q, k, v, mask, causal, p)


@dataclass(frozen=True)
class Kernels:
    """The functions a model trains with: dropout(x, p), attention(q, k, v, mask, causal,
    p), and the loss head with loss.linear_cross_entropy's signature."""

    dropout: Callable[[Tensor, float], Tensor]
    attention: Callable[[Tensor, Tensor, Tensor, Tensor | None, bool, float], Tensor]
    loss_head: Callable[..., tuple[Tensor, Tensor]]


# model.kernels. "stock" is PyTorch's own functions, the reference that the hand-written
# "fast" ones must learn the same as.
KERNELS: dict[str, Kernels] = settings.registry("model.kernels", settings.KERNELS, {
    "fast": Kernels(fast_dropout, fast_attention, linear_cross_entropy),
    "stock": Kernels(stock_dropout, stock_attention, stock_linear_cross_entropy),
})


def for_config(cfg: settings.ModelSettings) -> Kernels:
    """The Kernels that `cfg.kernels` names; an unknown name is a UserError."""
    return lookup(KERNELS, "model.kernels", cfg.kernels)
