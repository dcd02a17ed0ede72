"""reports/experiments.md from the grouped, tested runs."""
from __future__ import annotations

import datetime
import os
import platform

import numpy as np

from . import significance as sig
from .compare import AA_RUNS, METRICS, Arm, Group, Test, format_diff, value
from .experiments import Run


def _num(v, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and not np.isnan(v) else "—"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _mean_sd(arm: Arm, metric: str) -> str:
    vals = arm.values(metric)
    if np.isnan(vals).any() or not len(vals):
        return "—"
    fmt = METRICS[metric].fmt
    sd = f" ± {vals.std(ddof=1):{fmt}}" if len(vals) > 1 else ""
    return f"{vals.mean():{fmt}}{sd}"


def _delta(t: Test) -> str:
    fmt = METRICS[t.metric].fmt
    if np.isnan(t.delta):
        return "—"
    if np.isnan(t.low):
        return f"{t.delta:+{fmt}}"
    return f"{t.delta:+{fmt}} [{t.low:+{fmt}}, {t.high:+{fmt}}]"


def _p(p: float) -> str:
    return "—" if np.isnan(p) else f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def render(groups: list[Group], figures: dict[str, dict[str, str]], n_collected: int,
           unfinished: list[Run], sweep: str = "") -> str:
    """The report; `sweep`: the queue sweep's cost in one sentence (nmtlab.sweeplog.summary)."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n_runs = sum(len(a.runs) for g in groups for a in ([g.baseline] if g.baseline else [])
                 + g.arms)
    out = [
        "# Experiments", "",
        f"Made {now} on `{platform.node()}` ({platform.machine()}, {os.cpu_count()} cores) by "
        f"`nmtlab report` from {n_runs} run record(s) in reports/runs/ ({n_collected} written "
        f"from DVC experiments this time). Runs whose params differ only in the training `seed` "
        f"are replicates of one configuration; each configuration is tested against the "
        f"baseline's replicates (the runs with no params change). How to read it: "
        f"docs/seeds.md.", "",
        "Significance, on the metric each hypothesis names (hypotheses.yaml `metric:`):", "",
        f"- **test BLEU, several runs per side**: {sig.POOLED_METHOD}.",
        f"- **validation loss, several runs per side**: {sig.SEEDS_ONLY_METHOD}.",
        f"- **one run on a side**: {sig.SINGLE_RUN_METHOD} ({sig.BOOTSTRAP_SAMPLES} resamples); "
        f"its verdict says so. Validation loss with one run: too few runs.",
        f"- **verdict** at p < {sig.ALPHA}: helps / hurts (in the metric's better direction) / "
        f"no significant difference / too few runs (fewer than {sig.MIN_RUNS} runs a side). "
        f"**Holm** (Holm 1979, family-wise error) and **BH** (Benjamini & Hochberg 1995, false "
        f"discovery rate): the verdict again with p-values corrected over every hypothesis of "
        f"the group that has one.",
    ]
    if sweep:
        out += ["", f"**Cost of the sweep.** {sweep}"]
    for i, g in enumerate(groups):
        out += _group(g, figures.get(g.code, {}), len(groups) > 1, i)
    if unfinished:
        out += ["", "## Not finished (from DVC now)", "", "| experiment | state | note |",
                "|---|---|---|"]
        out += [f"| {_cell(r.name)} | {r.state} | {_cell(r.error) or '—'} |" for r in unfinished]
    return "\n".join(out) + "\n"


def _group(g: Group, figures: dict[str, str], several: bool, index: int) -> list[str]:
    commits = ", ".join(c[:7] for c in g.commits)
    out = ["", f"## Code version {index + 1}: commit(s) {commits}" if several else
           f"## Hypotheses (commit(s) {commits})", ""]
    base = g.baseline
    if base:
        seeds = ", ".join(str(r.seed) for r in base.runs)
        out.append(f"Baseline: {len(base.runs)} run(s) with no params change, seeds {seeds}: "
                   f"test BLEU {_mean_sd(base, 'bleu')}, validation loss "
                   f"{_mean_sd(base, 'val_loss')} (mean ± sd over seeds).")
    else:
        out.append("Baseline: none (no run without params changes): Δ is not computed; queue "
                   "one with `nmtlab hypotheses queue --seeds N baseline`.")
    out += ["", "| hypothesis | params changed | metric | runs | test BLEU | val loss | "
            "Δ named metric [95% CI] | p | verdict | seeds agreeing | Holm | BH |",
            "|---|---|---|--:|--:|--:|--:|--:|---|--:|---|---|"]
    for arm in g.arms:
        t = g.tests[arm.name][arm.metric]
        corr = g.corrected.get(arm.name, {})
        higher = METRICS[arm.metric].higher_is_better
        holm = sig.verdict(t.delta, corr["holm"], higher) if corr else "—"
        bh = sig.verdict(t.delta, corr["bh"], higher) if corr else "—"
        agree = f"{t.agree}/{t.n_exp}" if not np.isnan(t.delta) else "—"
        out.append("| " + " | ".join(_cell(c) for c in [
            arm.name, format_diff(arm.diff), arm.metric, len(arm.runs), _mean_sd(arm, "bleu"),
            _mean_sd(arm, "val_loss"), _delta(t), _p(t.p_value), t.verdict, agree,
            holm + (f" (p {_p(corr['holm'])})" if corr else ""),
            bh + (f" (q {_p(corr['bh'])})" if corr else "")]) + " |")
    out += ["", "Both metrics for every hypothesis (the named one is in the table above):", "",
            "| hypothesis | ΔBLEU [95% CI] | p | verdict | Δ val loss [95% CI] | p (val loss) "
            "| verdict (val loss) |",
            "|---|--:|--:|---|--:|--:|---|"]
    for arm in g.arms:
        b, v = g.tests[arm.name]["bleu"], g.tests[arm.name]["val_loss"]
        out.append("| " + " | ".join(_cell(c) for c in [
            arm.name, _delta(b), _p(b.p_value), b.verdict, _delta(v), _p(v.p_value),
            v.verdict]) + " |")
    for metric, png in figures.items():
        if metric in METRICS:
            out += ["", f"![Forest plot: Δ {METRICS[metric].label} per hypothesis]({png})"]
    out += _aa(g)
    tested = [(a.name, a.hypothesis) for a in g.arms if a.hypothesis]
    if tested:
        out += ["", "Hypotheses (hypotheses.yaml):", ""]
        out += [f"- `{name}`: {_cell(text)}" for name, text in tested]
    out += _runs(g)
    for key in ("val_loss_curves", "train_loss_curves"):
        if key in figures:
            out += ["", f"![{key.replace('_', ' ')}]({figures[key]})"]
    return out


def _aa(g: Group) -> list[str]:
    aa = g.aa
    out = ["", "### A/A calibration", ""]
    if not aa:
        return out + ["No baseline runs."]
    if "bleu" in aa or "val_loss" in aa:
        out.append(f"The baseline's seeds {', '.join(map(str, aa['used']))} split 3 vs 3 in "
                   f"all {sig.aa_splits(AA_RUNS).__len__()} ways, each split tested as if it "
                   f"were a hypothesis (the same configuration on both sides): ")
        for metric in METRICS:
            if metric in aa:
                calm, n = aa[metric]
                out.append(f"- {METRICS[metric].label}: \"no significant difference\" in "
                           f"{calm} of {n} splits ({calm / n:.0%}; wanted ≥ 90%).")
    else:
        out.append(f"Needs at least {AA_RUNS} baseline seeds; there are {aa['n']}: "
                   f"`nmtlab hypotheses queue --baseline-seeds {AA_RUNS} baseline`.")
    if "single_run" in aa:
        hits, n = aa["single_run"]
        out += ["", f"Single-run paired bootstrap (test-set noise only) on every pair of those "
                    f"baseline seeds: \"significant\" in {hits} of {n} pairs ({hits / n:.0%}) — "
                    f"two seeds of the same configuration."]
    return out


def _runs(g: Group) -> list[str]:
    out = ["", "### Runs", "", "| run | arm | seed | epochs | best val loss | test BLEU | "
           "test chrF | train min | CPU/GPU h | stopped by |", "|---|---|--:|--:|--:|--:|--:|--:"
           "|--:|---|"]
    minutes = hours = 0.0
    arms = ([g.baseline] if g.baseline else []) + g.arms
    stamps = []
    for arm in arms:
        for r in arm.runs:
            t, test = r.train, r.bleu.get("test", {})
            minutes += t.get("train_minutes", 0.0)
            hours += t.get("cpu_hours", t.get("gpu_hours", 0.0))
            stamps.append(r.timestamp)
            h = (f"{t['gpu_hours']:.3f} GPU" if "gpu_hours" in t else
                 f"{t['cpu_hours']:.3f} CPU" if "cpu_hours" in t else "—")
            out.append("| " + " | ".join(_cell(c) for c in [
                r.name, "baseline" if arm is g.baseline else arm.name, r.seed,
                _num(t.get("epochs"), "d"), _num(value(r, "val_loss"), ".4f"),
                _num(value(r, "bleu"), ".2f"), _num(test.get("chrf"), ".2f"),
                _num(t.get("train_minutes"), ".2f"), h, t.get("stopped_by", "—")]) + " |")
    n = sum(len(a.runs) for a in arms)
    stamps = sorted(s for s in stamps if s)
    span = f"; finished between {stamps[0]} and {stamps[-1]}" if stamps else ""
    out += ["", f"Cost: {n} runs, {minutes:.1f} training minutes in all "
                f"({hours:.2f} CPU/GPU hours: wall hours × threads){span}."]
    return out
