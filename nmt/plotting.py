"""Matplotlib helpers shared by the plots stage and the experiment report."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from . import fsio  # noqa: E402

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
