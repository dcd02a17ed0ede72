"""The report's proof picture: SmoothCE equals torch's label-smoothed cross-entropy.

    python -m nmtlab.loss_check

On one fixed random batch (seeded, with padding) it computes our loss and
`torch.nn.CrossEntropyLoss(label_smoothing=ε, ignore_index=pad)` for ε from 0
to 0.5, prints the table, and draws both curves over ε into
reports/label_smoothing_check.png with the largest difference in loss and in
gradient. Exits non-zero if they differ by more than float32 rounding.
"""
from __future__ import annotations

import sys

import torch
from matplotlib.figure import Figure  # not pyplot: no GUI backend, no global figure state
from torch import Tensor, nn

from nmt import fsio
from nmt.errors import main_entry
from nmt.loss import SmoothCE

OUTPUT = "reports/label_smoothing_check.png"
EPSILONS = [i * 0.05 for i in range(11)]  # 0, 0.05, ..., 0.5
TOKENS, VOCAB, PAD = 2000, 1000, 0
PAD_FRACTION = 0.25  # of the targets, so ignore_index is exercised
TOLERANCE = 1e-5  # float32 rounding of a mean over 2000 tokens is ~1e-6


def loss_and_grad(loss_fn: nn.Module, logits: Tensor, target: Tensor) -> tuple[float, Tensor]:
    x = logits.clone().requires_grad_()
    loss = loss_fn(x, target)
    loss.backward()
    return loss.item(), x.grad


def fixed_batch() -> tuple[Tensor, Tensor]:
    """Logits (N, V) of a half-trained model and targets (N,), ~PAD_FRACTION padding.

    The target gets a head start over random scores, so plain cross-entropy is
    low and the smoothing term visibly raises the loss with ε.
    """
    g = torch.Generator().manual_seed(0)
    target = torch.randint(1, VOCAB, (TOKENS,), generator=g)
    logits = 2.0 * torch.randn(TOKENS, VOCAB, generator=g)
    logits[torch.arange(TOKENS), target] += 10.0
    target[torch.rand(TOKENS, generator=g) < PAD_FRACTION] = PAD
    return logits, target


def compare() -> list[tuple[float, float, float, float]]:
    """Rows (ε, ours, torch's, max |gradient difference|) over EPSILONS."""
    logits, target = fixed_batch()
    rows = []
    for eps in EPSILONS:
        ours, ours_grad = loss_and_grad(SmoothCE(eps, ignore_index=PAD), logits, target)
        ref, ref_grad = loss_and_grad(
            nn.CrossEntropyLoss(label_smoothing=eps, ignore_index=PAD), logits, target)
        rows.append((eps, ours, ref, (ours_grad - ref_grad).abs().max().item()))
    return rows


def plot(rows: list[tuple[float, float, float, float]], path: str) -> None:
    eps = [r[0] for r in rows]
    loss_diff = max(abs(r[1] - r[2]) for r in rows)
    grad_diff = max(r[3] for r in rows)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(eps, [r[2] for r in rows], "-", color="tab:blue", lw=2,
            label="torch CrossEntropyLoss(label_smoothing=ε)")
    ax.plot(eps, [r[1] for r in rows], "o", color="tab:orange", ms=7, mfc="none", mew=2,
            label="SmoothCE (ours)")
    ax.set_title("Label-smoothed cross-entropy: ours vs torch\n"
                 f"{TOKENS} tokens (~{PAD_FRACTION:.0%} padding), vocabulary {VOCAB}, fixed seed",
                 fontsize=10)
    ax.set_xlabel("label smoothing ε")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.text(0.97, 0.05, f"max |loss difference| = {loss_diff:.1e}\n"
                        f"max |gradient difference| = {grad_diff:.1e}",
            transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9})
    fig.tight_layout()
    with fsio.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


@main_entry
def main() -> None:
    rows = compare()
    print(f"{'ε':>5}  {'SmoothCE':>10}  {'torch':>10}  {'|Δ loss|':>9}  {'max |Δ grad|':>12}")
    for eps, ours, ref, grad_diff in rows:
        print(f"{eps:5.2f}  {ours:10.6f}  {ref:10.6f}  {abs(ours - ref):9.1e}  {grad_diff:12.1e}")
    plot(rows, OUTPUT)
    print(f"wrote {OUTPUT}")
    worst = max(max(abs(r[1] - r[2]), r[3]) for r in rows)
    if worst > TOLERANCE:
        sys.exit(f"SmoothCE differs from torch by {worst:.1e} (> {TOLERANCE:.0e})")


if __name__ == "__main__":
    main()
