import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nmt.loss import SmoothCE, linear_cross_entropy, smoothed_cross_entropy

PAD = 1
EPSILONS = [0.0, 0.05, 0.1, 0.2, 0.5]


def batch(n: int = 64, v: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits (n, v) and targets (n,) with every fourth target padding."""
    g = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(n, v, generator=g)
    target = torch.randint(0, v, (n,), generator=g)
    target[::4] = PAD
    return logits, target


def loss_and_grad(loss_fn, logits, target):
    x = logits.clone().requires_grad_()
    loss = loss_fn(x, target)
    loss.backward()
    return loss, x.grad


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("epsilon", EPSILONS)
def test_equals_torch_loss_and_gradient(epsilon, reduction):
    logits, target = batch()
    ours, ours_grad = loss_and_grad(SmoothCE(epsilon, PAD, reduction), logits, target)
    ref, ref_grad = loss_and_grad(
        nn.CrossEntropyLoss(label_smoothing=epsilon, ignore_index=PAD, reduction=reduction),
        logits, target)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(ours_grad, ref_grad)
    assert ours_grad[::4].abs().max() == 0  # padding rows get no gradient


def test_zero_smoothing_is_plain_cross_entropy():
    logits, target = batch()
    loss, nll = smoothed_cross_entropy(logits, target, 0.0, PAD)
    plain = F.cross_entropy(logits, target, ignore_index=PAD, reduction="sum")
    torch.testing.assert_close(loss, plain)
    torch.testing.assert_close(nll, plain)


def test_function_returns_sums_and_unsmoothed_nll():
    logits, target = batch()
    real = (target != PAD).sum()
    loss, nll = smoothed_cross_entropy(logits, target, 0.1, PAD)
    ref = F.cross_entropy(logits, target, ignore_index=PAD, label_smoothing=0.1)
    torch.testing.assert_close(loss / real, ref)
    torch.testing.assert_close(nll, F.cross_entropy(logits, target, ignore_index=PAD,
                                                    reduction="sum"))


def test_flattens_batch_and_time():
    logits, target = batch(n=60)
    flat = smoothed_cross_entropy(logits, target, 0.1, PAD)
    shaped = smoothed_cross_entropy(logits.view(6, 10, -1), target.view(6, 10), 0.1, PAD)
    torch.testing.assert_close(shaped, flat)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_padding_gives_zero_not_nan(reduction):
    logits, _ = batch()
    target = torch.full((logits.size(0),), PAD)
    loss, grad = loss_and_grad(SmoothCE(0.1, PAD, reduction), logits, target)
    assert loss.item() == 0.0
    assert torch.isfinite(grad).all() and grad.abs().max() == 0
    assert smoothed_cross_entropy(logits, target, 0.1, PAD)[1].item() == 0.0


def test_bf16_logits_computed_in_float32():
    logits, target = batch()
    half = logits.bfloat16().requires_grad_()
    loss, nll = smoothed_cross_entropy(half, target, 0.1, PAD)
    assert loss.dtype == nll.dtype == torch.float32
    ref = F.cross_entropy(half.detach().float(), target, ignore_index=PAD, label_smoothing=0.1,
                          reduction="sum")
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert half.grad.dtype == torch.bfloat16


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="reduction"):
        SmoothCE(0.1, PAD, "none")
    with pytest.raises(ValueError, match="epsilon"):
        SmoothCE(1.0, PAD)


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.3])
def test_fused_head_equals_projection_then_loss(epsilon):
    """linear_cross_entropy = smoothed_cross_entropy(hidden @ W.T): loss, NLL and both
    gradients, with padding rows and chunks that do not divide the row count."""
    torch.manual_seed(1)
    hidden = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 16, dtype=torch.float64, requires_grad=True)
    target = torch.randint(1, 11, (3, 7))
    target[0, 4:] = 0
    target[2, 1:] = 0
    loss, nll = linear_cross_entropy(hidden, weight, target, epsilon, 0, chunk_rows=4)
    (loss * 0.37).backward()
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ref_loss, ref_nll = smoothed_cross_entropy(hidden @ weight.t(), target, epsilon, 0)
    (ref_loss * 0.37).backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    assert nll.item() == pytest.approx(ref_nll.item(), rel=1e-6)
    assert torch.allclose(got[0], hidden.grad, atol=1e-6)
    assert torch.allclose(got[1], weight.grad, atol=1e-6)
    assert got[0][2, 1:].abs().sum() == 0  # padding rows get no gradient


def test_fused_head_bf16_matches_float32_closely():
    torch.manual_seed(2)
    hidden = torch.randn(64, 32, requires_grad=True)
    weight = (torch.randn(500, 32) * 0.2).requires_grad_()
    target = torch.randint(1, 500, (64,))
    loss, _ = linear_cross_entropy(hidden, weight, target, 0.1, 0, dtype=torch.bfloat16)
    loss.backward()
    assert hidden.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32
    ref, _ = smoothed_cross_entropy(hidden @ weight.t(), target, 0.1, 0)
    assert loss.item() == pytest.approx(ref.item(), rel=2e-2)


def test_fused_head_without_grad_gives_the_loss_only():
    hidden, weight = torch.randn(5, 8), torch.randn(9, 8)
    target = torch.tensor([1, 2, 0, 4, 5])
    with torch.no_grad():
        loss, nll = linear_cross_entropy(hidden, weight, target, 0.0, 0)
    ref, _ = smoothed_cross_entropy(hidden @ weight.t(), target, 0.0, 0)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5) and nll.item() == loss.item()
