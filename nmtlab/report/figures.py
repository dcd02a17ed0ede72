"""The report's figures: a forest plot per metric, and the arms' mean validation curves."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nmt import fsio, trainlog  # noqa: E402
from nmt.plotting import line_plot  # noqa: E402

from .compare import METRICS, Group  # noqa: E402


def forest_plot(path: Path, group: Group, metric: str, dpi: int) -> bool:
    """One row per hypothesis, sorted by Δ: the mean Δ with its 95% interval, a dot per
    training seed, and the zero line. False (nothing written) when no arm has the metric."""
    m = METRICS[metric]
    rows = [(arm.name, group.tests[arm.name][metric]) for arm in group.arms]
    rows = [(name, t) for name, t in rows if not np.isnan(t.delta)]
    if not rows:
        return False
    # best at the top: the largest gain for BLEU, the largest drop for a loss
    rows.sort(key=lambda r: r[1].delta, reverse=m.higher_is_better)
    height = 1.8 + 0.42 * len(rows)
    fig, ax = plt.subplots(figsize=(7.5, height))
    ax.axvline(0, color="0.4", linewidth=1, linestyle="--", label="no difference")
    for y, (_, t) in enumerate(rows):
        dots = ax.scatter(t.seed_deltas, [y] * len(t.seed_deltas), s=14, color="tab:gray",
                          alpha=0.7, zorder=2)
        if not np.isnan(t.low):
            style = dict(fmt="o", color="tab:blue" if t.kind == "pooled" else "tab:orange",
                         capsize=3, zorder=3)
            bar = ax.errorbar(t.delta, y, xerr=[[t.delta - t.low], [t.high - t.delta]], **style)
            bar.set_label("mean Δ, 95% interval (seeds and sentences)" if t.kind == "pooled"
                          and metric == "bleu" else "mean Δ, 95% interval (seeds)"
                          if t.kind == "pooled" else "Δ, 95% interval (one run: test set only)")
        else:
            ax.scatter([t.delta], [y], marker="D", color="black", zorder=3,
                       label="mean Δ (too few runs to test)")
    dots.set_label("one training seed (minus the baseline mean)")
    ax.set_yticks(range(len(rows)), [f"{name} (n={t.n_exp})" for name, t in rows])
    ax.invert_yaxis()
    better = "right is better" if m.higher_is_better else "left is better"
    ax.set_xlabel(f"Δ {m.label} against the baseline ({better})")
    ax.set_ylabel("hypothesis (runs)")
    ax.set_title(f"Δ {m.label} per hypothesis, baseline n={rows[0][1].n_base}")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), fontsize=7, loc="lower center", ncol=2,
               frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout(rect=(0, 0.5 / height, 1, 1))  # room for the legend below
    with fsio.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return True


def curves(path: Path, group: Group, column: str, ylabel: str, dpi: int) -> bool:
    """Each arm's per-epoch `column`, averaged over its seeds (epochs all its runs reached)."""
    series = {}
    for arm in [a for a in [group.baseline] if a] + group.arms:
        logs = [trainlog.parse(r.epochs_tsv, f"{r.name}: epoch log")
                for r in arm.runs if r.epochs_tsv]
        logs = [rows for rows in logs if rows]
        if not logs:
            continue
        n = min(len(rows) for rows in logs)
        mean = np.mean([[row[column] for row in rows[:n]] for rows in logs], axis=0)
        label = "baseline" if arm is group.baseline else arm.name
        series[f"{label} (n={len(logs)})"] = ([r["epoch"] for r in logs[0][:n]], list(mean))
    if not series:
        return False
    line_plot(path, series, title=f"{ylabel.capitalize()} per epoch, mean over seeds",
              xlabel="epoch", ylabel=ylabel, dpi=dpi, shared="same mean curve")
    return True
