"""The report's figures: a forest plot per metric, and the arms' mean validation curves."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nmt import fsio, trainlog  # noqa: E402
from nmt.plotting import line_plot  # noqa: E402

from ..metrics import METRICS  # noqa: E402
from .compare import SAME, Comparison, Group  # noqa: E402

LABELS = {
    "paired": "mean Δ, interval (seeds paired)",
    "unpaired": "mean Δ, 95% interval (unpaired)",
    "single run": "Δ, 95% interval (one run: test set only)",
}


def forest_plot(path: Path, group: Group, metric: str, dpi: int) -> bool:
    """One row per comparison (every arm against the baseline, and against its own reference
    where that is another entry), sorted by Δ: the mean Δ with its interval, a dot per
    training seed, the ±δ band and the zero line. False (nothing written) when no row has
    the metric."""
    m = METRICS[metric]
    rows = [(label, tests[metric]) for label, tests in group.both
            if not np.isnan(tests[metric].delta)]
    if not rows:
        return False
    rows.sort(key=lambda r: r[1].delta, reverse=m.higher_is_better)  # best at the top
    height = 1.8 + 0.42 * len(rows)
    fig, ax = plt.subplots(figsize=(9, height))
    ax.axvline(0, color="0.4", linewidth=1, linestyle="--", label="no difference")
    for y, (_, c) in enumerate(rows):
        _row(ax, y, c)
    ax.set_yticks(range(len(rows)), [f"{label} (n={c.seeds})" for label, c in rows])
    ax.invert_yaxis()
    better = "right is better" if m.higher_is_better else "left is better"
    ax.set_xlabel(f"Δ {m.label} against the reference\n({better})")
    ax.set_ylabel("hypothesis (seeds)")
    base = group.baseline
    ax.set_title(f"Δ {m.label} per hypothesis\n(paired by seed; baseline n="
                 f"{len(base.runs) if base else 0})")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), fontsize=7, loc="lower center", ncol=2,
               frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout(rect=(0, 0.7 / height, 1, 1))  # room for the legend below
    with fsio.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return True


def _row(ax, y: int, c: Comparison) -> None:
    ax.fill_betweenx([y - 0.35, y + 0.35], -c.margin, c.margin, color="tab:green", alpha=0.12,
                     linewidth=0, label="±δ, the smallest effect worth knowing")
    ax.scatter(c.seed_deltas, [y] * len(c.seed_deltas), s=14, color="tab:gray", alpha=0.7,
               zorder=2, label="one training seed (its Δ)")
    if c.kind == SAME:
        ax.scatter([0], [y], marker="s", color="tab:purple", zorder=3,
                   label="Δ exactly 0 in every seed (same training or best epoch)")
    elif not np.isnan(c.low):
        ax.errorbar(c.delta, y, xerr=[[c.delta - c.low], [c.high - c.delta]], fmt="o",
                    color="tab:orange" if c.kind == "single run" else "tab:blue", capsize=3,
                    zorder=3, label=LABELS[c.kind])
    else:
        ax.scatter([c.delta], [y], marker="D", color="black", zorder=3,
                   label="mean Δ (too few runs to test)")


def curves(path: Path, group: Group, column: str, ylabel: str, dpi: int) -> bool:
    """Each arm's per-epoch `column`, averaged over its seeds (epochs all its runs reached)."""
    series = {}
    for arm in group.all_arms:
        logs = [trainlog.parse(r.epochs_tsv, f"{r.name}: epoch log")
                for r in arm.runs if r.epochs_tsv]
        logs = [rows for rows in logs if rows]
        if not logs:
            continue
        n = min(len(rows) for rows in logs)
        mean = np.mean([[row[column] for row in rows[:n]] for rows in logs], axis=0)
        series[f"{arm.name} (n={len(logs)})"] = ([r["epoch"] for r in logs[0][:n]], list(mean))
    if not series:
        return False
    line_plot(path, series, title=f"{ylabel.capitalize()} per epoch, mean over seeds",
              xlabel="epoch", ylabel=ylabel, dpi=dpi, shared="same mean curve")
    return True
