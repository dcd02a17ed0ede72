"""Label-smoothed cross-entropy: the lab report's "SmoothCE", written out.

With smoothing ε the target distribution is (1 - ε) on the true token plus ε
spread uniformly over all V classes (the true one included, as torch does), so
per token

    loss = (1 - ε) · (-log p[target]) + ε · mean over classes of (-log p)

Padding positions (target == ignore_index) count for nothing. At ε = 0 this is
plain cross-entropy, and for every ε it equals
`torch.nn.CrossEntropyLoss(label_smoothing=ε, ignore_index=pad)`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def smoothed_cross_entropy(logits: Tensor, target: Tensor, epsilon: float,
                           ignore_index: int) -> tuple[Tensor, Tensor]:
    """Label-smoothed cross-entropy and plain NLL, both summed over real tokens.

    Args:
        logits: (N, V) unnormalised scores, any float dtype; (..., V) is flattened.
        target: (N,) class indices; positions equal to `ignore_index` are skipped.
        epsilon: label smoothing ε in [0, 1).
        ignore_index: the padding id.

    Returns:
        (loss_sum, nll_sum): float32 scalars summed, not averaged, over the
        non-padding tokens, so the caller can divide by the token count of a
        whole accumulation window. Both are 0 when every token is padding.
    """
    # log_softmax in float32: bf16 log-probabilities lose the small differences
    # between unlikely tokens that the smoothing term sums over.
    logp = F.log_softmax(logits.reshape(-1, logits.size(-1)).float(), dim=-1)  # (N, V)
    target = target.reshape(-1)
    real = target != ignore_index
    # Padding rows gather class 0 (always a valid index) and are then zeroed.
    nll = -logp.gather(1, target.masked_fill(~real, 0).unsqueeze(1)).squeeze(1)  # (N,)
    nll = nll.masked_fill(~real, 0.0)
    if epsilon == 0.0:  # plain cross-entropy: skip the second pass over all V classes
        nll_sum = nll.sum()
        return nll_sum, nll_sum
    # Sum, then scale the (N,) result: the backward of a sum is a free broadcast,
    # while that of a mean would write a second (N, V) tensor.
    uniform = -logp.sum(dim=-1).masked_fill(~real, 0.0) / logp.size(-1)  # (N,) CE against uniform
    loss = (1.0 - epsilon) * nll + epsilon * uniform
    return loss.sum(), nll.sum()


class SmoothCE(nn.Module):
    """Module form of `smoothed_cross_entropy`, a drop-in for nn.CrossEntropyLoss.

    reduction "sum" sums over real tokens; "mean" divides by their count. Unlike
    torch, which returns NaN (0 / 0) when every target is padding, "mean"
    returns 0 there: an all-padding batch must not poison the running loss.
    """

    def __init__(self, epsilon: float = 0.0, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__()
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.epsilon = epsilon
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """logits (N, V), target (N,) -> scalar float32 loss."""
        loss, _ = smoothed_cross_entropy(logits, target, self.epsilon, self.ignore_index)
        if self.reduction == "sum":
            return loss
        tokens = (target != self.ignore_index).sum().clamp(min=1)
        return loss / tokens

    def extra_repr(self) -> str:
        return (f"epsilon={self.epsilon}, ignore_index={self.ignore_index}, "
                f"reduction={self.reduction!r}")
