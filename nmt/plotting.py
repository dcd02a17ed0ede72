"""Matplotlib helpers shared by the plots stage and the experiment report."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import fsio  # noqa: E402


def read_tsv(path: str | os.PathLike) -> list[dict[str, float]]:
    with open(path, encoding="utf-8", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f, delimiter="\t")]


def line_plot(path: Path, series: dict[str, tuple[list[float], list[float]]], *, title: str,
              xlabel: str, ylabel: str, dpi: int = 120, markers: bool = True,
              logy: bool = False) -> None:
    """One figure, one curve per entry of `series` (label -> (x, y)), saved atomically."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, (x, y) in series.items():
        ax.plot(x, y, marker="o" if markers else None, markersize=3, linewidth=1.5, label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with fsio.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
