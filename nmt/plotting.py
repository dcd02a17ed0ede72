"""Matplotlib helpers shared by the plots stage and the experiment report, and the plots
stage's figures of one run (`training_figures`)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from . import fsio, trainlog  # noqa: E402

Series = dict[str, tuple[list[float], list[float]]]  # label -> (x, y)


def merge_identical(series: Series, shared: str = "same training") -> Series:
    """Curves equal point for point drawn once, labelled with every run's name and why they
    are one (`shared`): runs that share one training (beam size or SWA variants) would
    otherwise hide under each other. For curves that only a schedule sets (the learning
    rate), say "same schedule"."""
    labels: dict[tuple, list[str]] = {}
    for label, (x, y) in series.items():
        labels.setdefault((tuple(x), tuple(y)), []).append(label)
    return {(names[0] if len(names) == 1 else f"{', '.join(names)} ({shared})"):
            (list(x), list(y)) for (x, y), names in labels.items()}


def curves_figure(series: Series, *, title: str, xlabel: str, ylabel: str,
                  markers: bool = True, logy: bool = False,
                  shared: str = "same training") -> plt.Figure:
    """One curve per distinct entry of `series` (merge_identical(series, shared));
    whole-number x values (epochs, steps) get whole-number ticks."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, (x, y) in merge_identical(series, shared).items():
        ax.plot(x, y, marker="o" if markers else None, markersize=3, linewidth=1.5, label=label)
    if all(float(v).is_integer() for x, _ in series.values() for v in x):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def line_plot(path: Path, series: Series, *, title: str, xlabel: str, ylabel: str,
              dpi: int = 120, markers: bool = True, logy: bool = False,
              shared: str = "same training") -> None:
    """curves_figure saved atomically as a PNG."""
    fig = curves_figure(series, title=title, xlabel=xlabel, ylabel=ylabel, markers=markers,
                        logy=logy, shared=shared)
    with fsio.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)


def training_figures(out_dir: Path, epochs: list[dict], steps: list[dict], *, name: str,
                     test_bleu: float | None, dpi: int) -> None:
    """The PNGs of one run's training logs (trainlog rows) in `out_dir`: loss per epoch
    (its title carries the test BLEU, when there is one), learning rate per step, and
    validation BLEU against training minutes where training logged it (train.val_bleu)."""
    x = [r["epoch"] for r in epochs]
    bleu = f", test BLEU {test_bleu:.1f}" if test_bleu is not None else ""
    line_plot(out_dir / "loss.png",
              {"train loss": (x, [r["train_loss"] for r in epochs]),
               "validation loss": (x, [r["val_loss"] for r in epochs])},
              title=f"Loss per epoch ({name}{bleu})", xlabel="epoch",
              ylabel="cross-entropy per target token", dpi=dpi)
    line_plot(out_dir / "lr.png",
              {"learning rate": ([r["step"] for r in steps], [r["lr"] for r in steps])},
              title=f"Learning rate per optimizer step ({name})", xlabel="optimizer step",
              ylabel="learning rate", dpi=dpi, markers=False)
    if all(trainlog.BLEU_COLUMN in r for r in epochs):
        line_plot(out_dir / "val_bleu.png",
                  {"greedy validation BLEU": ([r["minutes"] for r in epochs],
                                              [r[trainlog.BLEU_COLUMN] for r in epochs])},
                  title=f"Validation BLEU against training time ({name})",
                  xlabel="training minutes (validation included)",
                  ylabel="BLEU (greedy, validation set)", dpi=dpi)
