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


class _LinearCrossEntropy(torch.autograd.Function):
    """The output projection and `smoothed_cross_entropy` in one pass over row chunks.

    Written out, the loss head makes and keeps several (N, V) tensors: the
    logits, their float32 copy, the log-probabilities for backward, then in
    backward a zero-filled gather gradient, the log_softmax gradient and a copy
    back to bf16: at a vocabulary of thousands, a large share of a CPU training
    step (docs/speed.md). Here the logits come from one matmul; each chunk of
    rows is then turned into float32, reduced (log-sum-exp, target logit, mean)
    and, while still in cache, into its gradient, softmax - (1 - ε) onehot - ε / V,
    which is all backward needs: the loss is a sum, so its gradient is this times
    a scalar.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, target: Tensor, epsilon: float,
                ignore_index: int, dtype: torch.dtype, chunk_rows: int):
        with torch.autocast(hidden.device.type, enabled=False):  # dtype is chosen here
            return _LinearCrossEntropy._forward(ctx, hidden, weight, target, epsilon,
                                                ignore_index, dtype, chunk_rows)

    @staticmethod
    def _forward(ctx, hidden, weight, target, epsilon, ignore_index, dtype, chunk_rows):
        h = hidden.reshape(-1, hidden.shape[-1]).to(dtype)
        w = weight.to(dtype)
        logits = h @ w.t()  # (N, V)
        n, v = logits.shape
        target = target.reshape(-1)
        real = target != ignore_index
        safe = target.masked_fill(~real, 0).unsqueeze(1)
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_logits = torch.empty_like(logits) if want_grad else None
        nll = logits.new_empty(n, dtype=torch.float32)
        uniform = logits.new_empty(n, dtype=torch.float32) if epsilon else None
        for r in range(0, n, chunk_rows):
            rows = slice(r, r + chunk_rows)
            x = logits[rows].float()
            lse = torch.logsumexp(x, dim=-1)
            nll[rows] = lse - x.gather(1, safe[rows]).squeeze(1)
            if epsilon:
                uniform[rows] = lse - x.mean(dim=-1)
            if want_grad:
                x.sub_(lse.unsqueeze(1)).exp_()
                if epsilon:
                    x.sub_(epsilon / v)
                x.scatter_add_(1, safe[rows], x.new_full((x.shape[0], 1), epsilon - 1.0))
                x.mul_(real[rows].unsqueeze(1))
                grad_logits[rows] = x
        nll = nll.masked_fill(~real, 0.0)
        loss = nll if not epsilon else (
            (1.0 - epsilon) * nll + epsilon * uniform.masked_fill(~real, 0.0))
        if want_grad:
            ctx.save_for_backward(grad_logits, h, w)
            ctx.dtypes = (hidden.dtype, weight.dtype, hidden.shape)
        loss_sum, nll_sum = loss.sum(), nll.sum()
        ctx.mark_non_differentiable(nll_sum)
        return loss_sum, nll_sum

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor):
        grad_logits, h, w = ctx.saved_tensors
        hidden_dtype, weight_dtype, hidden_shape = ctx.dtypes
        g = grad_loss.to(grad_logits.dtype)
        grad_h = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_h = (grad_logits @ w).mul_(g).to(hidden_dtype).reshape(hidden_shape)
        if ctx.needs_input_grad[1]:
            grad_w = (grad_logits.t() @ h).mul_(g).to(weight_dtype)
        return grad_h, grad_w, None, None, None, None, None


def linear_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, epsilon: float,
                         ignore_index: int, dtype: torch.dtype | None = None,
                         chunk_rows: int | None = None) -> tuple[Tensor, Tensor]:
    """`smoothed_cross_entropy(hidden @ weight.T, ...)` without the (N, V) intermediates.

    Args:
        hidden: (..., D) final decoder states; weight: (V, D) output projection.
        target, epsilon, ignore_index: as for `smoothed_cross_entropy`.
        dtype: matmul dtype (bf16 under mixed precision); None = hidden's dtype.
            Reductions and the gradient's softmax are float32 either way.
        chunk_rows: rows per chunk; None: 64 on the CPU, where 64 rows of 8000 float32
            logits (2 MB) stay in L2, and all rows at once on a GPU, where each chunk
            would cost kernel launches instead.

    Returns (loss_sum, nll_sum) like `smoothed_cross_entropy`; only loss_sum has
    a gradient, and it may be backpropagated once.
    """
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    if chunk_rows is None:
        chunk_rows = 64 if hidden.device.type == "cpu" else max(1, hidden.numel())
    return _LinearCrossEntropy.apply(hidden, weight, target, float(epsilon), ignore_index,
                                     dtype or hidden.dtype, chunk_rows)


def stock_linear_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, epsilon: float,
                               ignore_index: int, dtype: torch.dtype | None = None
                               ) -> tuple[Tensor, Tensor]:
    """`linear_cross_entropy` the plain way, PyTorch's own functions only (model.kernels:
    stock): the logits, then F.cross_entropy with its label smoothing, in float32.

    Returns (loss_sum, nll_sum) as `linear_cross_entropy` does; nll_sum has no gradient.
    """
    dtype = dtype or hidden.dtype
    logits = F.linear(hidden.to(dtype), weight.to(dtype)).float()
    logits, target = logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
    loss_sum = F.cross_entropy(logits, target, ignore_index=ignore_index,
                               label_smoothing=epsilon, reduction="sum")
    if not epsilon:
        return loss_sum, loss_sum.detach()
    with torch.no_grad():
        nll_sum = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    return loss_sum, nll_sum
