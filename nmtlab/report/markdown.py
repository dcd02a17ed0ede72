"""reports/experiments.md from the grouped, compared runs and the calibration."""
from __future__ import annotations

import datetime
import os
import platform
from typing import Any

import numpy as np

from ..metrics import METRICS
from . import calibration, sequential
from . import significance as sig
from .compare import Arm, Comparison, Group, format_diff, value
from .experiments import PROVENANCE, Run


def _num(v, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and not np.isnan(v) else "—"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _mean_sd(arm: Arm, metric: str) -> str:
    vals = arm.values(metric)
    if np.isnan(vals).any() or not len(vals):
        return "—"
    fmt = METRICS[metric].fmt
    sd = f" ± {vals.std(ddof=1):{fmt}}" if len(vals) > 1 else ""
    return f"{vals.mean():{fmt}}{sd}"


def _delta(c: Comparison) -> str:
    fmt = METRICS[c.metric].fmt
    if np.isnan(c.delta):
        return "—"
    if np.isnan(c.low):
        return f"{c.delta:+{fmt}}"
    level = "" if abs(c.level - (1 - sig.ALPHA)) < 1e-9 else f" ({c.level:.1%})"
    return f"{c.delta:+{fmt}} [{c.low:+{fmt}}, {c.high:+{fmt}}]{level}"


def _p(p: float) -> str:
    return "—" if np.isnan(p) else f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _pct(x: float) -> str:
    return "—" if np.isnan(x) else f"{x:.0%}"


def render(groups: list[Group], figures: list[dict[str, str]], n_collected: int,
           unfinished: list[Run], sweep: str = "", calibrated: dict | None = None) -> str:
    """The report; `sweep`: the queue sweep's cost in one sentence (nmtlab.sweeplog.summary);
    `calibrated`: calibration.json's figures (None: not calibrated yet); `figures`: each
    group's figure files (what -> file name), as __main__.write_figures wrote them."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n_runs = sum(len(a.runs) for g in groups for a in g.all_arms)
    out = [
        "# Experiments", "",
        f"Made {now} on `{platform.node()}` ({platform.machine()}, {os.cpu_count()} cores) by "
        f"`nmtlab report` from {n_runs} run record(s) in reports/runs/ ({n_collected} written "
        f"from DVC experiments this time). Runs whose params differ only in the training `seed` "
        f"are one arm; each arm is compared seed by seed with its reference, the baseline (the "
        f"runs with no params change) or the entry its catalogue entry names (`against`). How "
        f"to read it: docs/seeds.md.", "", *_method(calibrated)]
    if sweep:
        out += ["", f"**Cost of the sweep.** {sweep}"]
    out += ["", f"**Provenance.** {provenance_line(groups)}"]
    for i, g in enumerate(groups):
        out += _group(g, figures[i] if i < len(figures) else {}, len(groups) > 1, i, calibrated)
    if unfinished:
        out += ["", "## Not finished (from DVC now)", "", "| experiment | state | note |",
                "|---|---|---|"]
        out += [_row([r.name, r.state, r.error or "—"]) for r in unfinished]
    return "\n".join(out) + "\n"


def _method(calibrated: dict | None) -> list[str]:
    chosen = calibrated["chosen"]["bleu"] if calibrated else calibration.CHOSEN["bleu"]
    sentences = [
        "- **test BLEU** adds the variance of the sentences' main effect on Δ, whether another "
        "test set would agree, from a seed × sentence analysis of variance of the runs' "
        "jackknife pseudo-values; the run-by-sentence noise, already in each Δ_k, is not "
        "counted again, and the degrees of freedom stay n − 1."] \
        if chosen == "seeds + sentences" else []
    return [
        "How each comparison is tested (the method and its measured calibration: "
        "docs/seeds.md, and the Calibration section below):", "",
        "- **paired by seed**: Δ_k = arm seed k − reference seed k (same initialisation and "
        "batch order; where DVC's run cache restored it, the very same training); Δ is the "
        "mean of the per-seed Δ_k, tested by Student's t on them with n − 1 degrees of "
        "freedom. Every per-seed Δ exactly 0 on a training metric is no verdict but \"same "
        "training\" (or \"same best epoch\", when the change acts only after it).",
        *sentences,
        "- **seeds that do not pair**: Welch's t over the runs, with min(n) − 1 degrees of "
        "freedom (Hsu 1938). **One run on a side**: "
        f"{sig.SINGLE_RUN_METHOD}; its verdict says so.",
        "- **verdict**: helps / hurts at p < 0.05 (in the metric's better direction); **no "
        "effect beyond ±δ** when the two one-sided tests (TOST, Schuirmann 1987) put Δ inside "
        "the entry's smallest effect worth knowing δ (`min_effect`); otherwise no significant "
        "difference. A sweep in rounds (`make sweep`) decides at 2, 4 and 6 seeds with an "
        "alpha-spending boundary and stops for futility (docs/seeds.md); its intervals are at "
        "the level of the look that decided.",
        "- **power at δ**: the chance a test at α 0.05 with this standard error finds an effect "
        "of δ. **Holm** (Holm 1979, family-wise error) and **BH** (Benjamini & Hochberg 1995, "
        "false discovery rate): the verdict again with the p-values corrected over every "
        "hypothesis of the group. Several runs per configuration: Clark et al. 2011.",
    ]


def provenance_line(groups: list[Group]) -> str:
    """One line: the provenance every run shares, or which runs were kept apart and why."""
    if not groups:
        return "No runs."
    varying = [k for k in PROVENANCE if len({repr(g.provenance[k]) for g in groups}) > 1]
    if not varying:
        shared = ", ".join(_provenance(k, v) for k, v in groups[0].provenance.items())
        return f"All runs share one provenance: {shared}."
    parts = [f"section {i + 1} ({sum(len(a.runs) for a in g.all_arms)} runs): "
             + ", ".join(_provenance(k, g.provenance[k]) for k in varying)
             for i, g in enumerate(groups)]
    return (f"Kept apart (never pooled or paired), differing in "
            f"{', '.join(k.replace('_', ' ') for k in varying)}: " + "; ".join(parts) + ".")


def _provenance(key: str, value: Any) -> str:
    if key == "budget_stop":
        return "stopped by the time budget" if value else "no budget stop"
    return f"{key.replace('_', ' ')} {value}"


def _group(g: Group, figures: dict[str, str], several: bool, index: int,
           calibrated: dict | None) -> list[str]:
    commits = ", ".join(c[:7] for c in g.commits)
    out = ["", f"## Section {index + 1}: commit(s) {commits}, code {g.code}" if several else
           f"## Hypotheses (commit(s) {commits}, code {g.code})", "", _design_line(g), ""]
    base = g.baseline
    if base:
        seeds = ", ".join(str(r.seed) for r in base.runs)
        out.append(f"Baseline: {len(base.runs)} run(s) with no params change, seeds {seeds}: "
                   f"test BLEU {_mean_sd(base, 'bleu')}, validation loss "
                   f"{_mean_sd(base, 'val_loss')} (mean ± sd over seeds).")
    else:
        out.append("Baseline: none (no run without params changes): Δ is not computed; queue "
                   "one with `nmtlab hypotheses queue --seeds N baseline`.")
    out += _named_table(g)
    if g.missing:
        out += ["", f"No runs yet on this code version and provenance: {', '.join(g.missing)} "
                    f"(`make sweep` runs them)."]
    out += _both_table(g)
    for metric, png in figures.items():
        if metric in METRICS:
            out += ["", f"![Forest plot: Δ {METRICS[metric].label} per hypothesis]({png})"]
    out += _calibration(g, calibrated)
    tested = [(a.name, a.hypothesis) for a in g.arms if a.hypothesis]
    if tested:
        out += ["", "Hypotheses (hypotheses.yaml):", ""]
        out += [f"- `{name}`: {_cell(text)}" for name, text in tested]
    out += _runs(g)
    for key in ("val_loss_curves", "train_loss_curves"):
        if key in figures:
            out += ["", f"![{key.replace('_', ' ')}]({figures[key]})"]
    return out


def _design_line(g: Group) -> str:
    if g.design == "sequential":
        d = sequential.SEQUENTIAL
        looks = ", ".join(map(str, d.looks))
        return (f"Swept in rounds (reports/sweep_rounds.tsv): looks at {looks} "
                f"seeds, alpha spent {', '.join(map(str, d.alphas))}, futility below "
                f"{d.futility:.0%} conditional power.")
    return ("Verdicts: one look at the seeds each arm has, at α 0.05 (this code version's "
            "runs were queued with a fixed number of seeds, not in rounds).")


def _named_table(g: Group) -> list[str]:
    out = ["", "| hypothesis | against | params changed | metric | runs | test BLEU | val loss | "
           "Δ named metric [95% CI] | p | verdict | δ | TOST p | power at δ | seeds agreeing "
           "| Holm | BH |", "|---|---|---|---|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|---|---|"]
    for arm in g.arms:
        c = g.named[arm.name]
        corr = g.corrected.get(arm.name, {})
        adjusted = [_corrected(c, corr, k) for k in ("holm", "bh")]
        agree = f"{c.agree}/{c.seeds}" if c.kind in ("paired", "unpaired") else "—"
        out.append(_row([
            arm.name, c.reference, format_diff(arm.diff), arm.metric,
            len(arm.runs), _mean_sd(arm, "bleu"), _mean_sd(arm, "val_loss"), _delta(c),
            _p(c.p_value), c.verdict + (f"; {c.note}" if c.note and c.kind != "single run"
                                        else ""),
            f"{c.margin:g}", _p(c.tost_p), _pct(c.power), agree, *adjusted]))
    return out


def _corrected(c: Comparison, corr: dict[str, float], key: str) -> str:
    if not corr:
        return "—"
    higher = METRICS[c.metric].higher_is_better
    crossed = corr[key] < sig.ALPHA and c.delta != 0
    text = ("helps" if (c.delta > 0) == higher else "hurts") if crossed else \
        "no significant difference"
    return f"{text} ({'p' if key == 'holm' else 'q'} {_p(corr[key])})"


def _both_table(g: Group) -> list[str]:
    out = ["", "Both metrics, every arm against the baseline (and against its own reference "
               "where that is another entry):", "",
           "| hypothesis | ΔBLEU [95% CI] | p | verdict | Δ val loss [95% CI] | p (val loss) "
           "| verdict (val loss) |", "|---|--:|--:|---|--:|--:|---|"]
    for label, tests in g.both:
        b, v = tests["bleu"], tests["val_loss"]
        out.append(_row([label, _delta(b), _p(b.p_value), b.verdict, _delta(v),
                         _p(v.p_value), v.verdict]))
    return out


def _calibration(g: Group, calibrated: dict | None) -> list[str]:
    out = ["", "### Calibration", ""]
    if g.single_run_aa:
        hits, n = g.single_run_aa
        out += [f"The single-run paired bootstrap (test-set noise only) on every pair of the "
                f"baseline's first {min(6, len(g.baseline.runs))} seeds: \"significant\" in "
                f"{hits} of {n} pairs ({hits / n:.0%}), two seeds of the same configuration. "
                f"Hence several seeds per arm.", ""]
    names = [r.name for r in g.baseline.runs] if g.baseline else []
    if not calibrated or calibrated["baseline"]["runs"] != names \
            or calibrated["baseline"]["code"] != g.code:
        made = (f" (reports/calibration.json was made from {len(calibrated['baseline']['runs'])} "
                f"baseline runs of code {calibrated['baseline']['code']})" if calibrated else "")
        return out + [f"Not calibrated on this baseline{made}: `nmtlab report --calibrate` "
                      f"measures the tests on the baseline runs of the newest section that has "
                      f"at least {calibration.MIN_BASELINE_RUNS}."]
    return out + calibration_section(calibrated)


def calibration_section(cal: dict[str, Any]) -> list[str]:
    """calibration.json's figures: the null model, each test at each design, the verdict on
    the tests the report uses, and the sequential procedure."""
    comp, base = cal["components"], cal["baseline"]
    reps = min(r["replications"] for r in cal["null"] if r["test"] != "previous report")
    out = [f"Measured on a null model of the baseline's {len(base['runs'])} runs "
           f"({base['sentences']} test sentences; nmtlab/report/calibration.py): their seed "
           f"variance of test BLEU is {comp['seed_variance']:.3f} BLEU² per run, of which the "
           f"run-by-sentence interaction is {comp['interaction']:.3f} (a seed × sentence "
           f"analysis of variance of pseudo-values). A simulated run takes each sentence's "
           f"statistics from a random baseline run ({comp['drawn']:.3f}) plus a seed effect of "
           f"variance {comp['seed_effect']:.3f}; each comparison draws its own test set; "
           f"validation loss is normal with sd {cal['val_loss_sd']:.4f}. {reps} A/A comparisons "
           f"per design and test (ten times as many for the validation loss; RNG seed "
           f"{cal['rng_seed']}, made {cal['made']}).", "",
           "| metric | design | test | false-positive rate at α 0.05 | 95% interval coverage |",
           "|---|---|---|--:|--:|"]
    for r in cal["null"]:
        used = " (used)" if cal["chosen"].get(r["metric"]) == r["test"] else ""
        out.append(_row([r["metric"], r["design"], r["test"] + used,
                         f"{r['false_positive_rate']:.1%} ± {r['fpr_se']:.1%}",
                         f"{r['coverage']:.1%}"]))
    return out + ["", _calibration_verdict(cal)] + _sequential_table(cal)


def _calibration_verdict(cal: dict[str, Any]) -> str:
    """Whether the tests the report uses meet the bar: false-positive rate at most 5% and
    coverage at least 94%, each within twice the simulation's error (an exact test measures
    5% give or take that error)."""
    used = [r for r in cal["null"] if cal["chosen"].get(r["metric"]) == r["test"]]
    worst = max(used, key=lambda r: r["false_positive_rate"])
    narrow = min(used, key=lambda r: r["coverage"])
    ok = all(r["false_positive_rate"] - 2 * r["fpr_se"] <= sig.ALPHA
             and r["coverage"] + 2 * r["coverage_se"] >= 0.94 for r in used)
    low = [f"{r['metric']} at {r['design']}" for r in used
           if r["false_positive_rate"] + 2 * r["fpr_se"] < sig.ALPHA]
    return (f"The tests the report uses: false-positive rate at most "
            f"{worst['false_positive_rate']:.1%} ± {worst['fpr_se']:.1%} ({worst['metric']}, "
            f"{worst['design']}; wanted ≤ 5%) and coverage at least {narrow['coverage']:.1%} "
            f"(wanted ≥ 94%), each within twice the simulation's error: "
            f"{'passes' if ok else 'FAILS'}. Conservative (below 5% by more than twice that "
            f"error) only at: {', '.join(low) or 'none'}.")


def _sequential_table(cal: dict[str, Any]) -> list[str]:
    d = cal["design"]
    out = ["", f"The sweep in rounds (looks at {', '.join(map(str, d['looks']))} seeds, alpha "
               f"{', '.join(map(str, d['alphas']))}, futility below {d['futility']:.0%} "
               f"conditional power), on simulated arms with a true effect in the better "
               f"direction:", "",
           "| metric | true effect | helps | hurts | no effect beyond ±δ | futility | "
           "no significant difference | mean seeds per arm |", "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for r in cal["sequential"]:
        fmt = METRICS[r["metric"]].fmt
        out.append(_row([r["metric"], f"{r['effect']:{fmt}} (δ {r['margin']:g})",
                         *(f"{r[k]:.1%}" for k in ("helps", "hurts", "equivalent", "futile",
                                                   "undecided")), f"{r['mean_seeds']:.2f}"]))
    nulls = {r["metric"]: r for r in cal["sequential"] if r["effect"] == 0}
    rates = ", ".join(f"{n['helps'] + n['hurts']:.1%} ({METRICS[m].label}, "
                      f"{n['mean_seeds']:.2f} seeds per arm)" for m, n in nulls.items())
    at_margin = ", ".join(f"{r['equivalent']:.1%} ({METRICS[r['metric']].label})"
                          for r in cal["sequential"] if r["effect"] == r["margin"])
    return out + ["", f"The whole procedure's false-positive rate (helps or hurts with no "
                      f"effect): {rates}; wanted ≤ 5%. An arm whose true effect is δ is "
                      f"called \"no effect beyond ±δ\" in {at_margin}."]


def _runs(g: Group) -> list[str]:
    out = ["", "### Runs", "", "| run | arm | seed | epochs | best val loss | test BLEU | "
           "test chrF | train min | CPU/GPU h | stopped by |", "|---|---|--:|--:|--:|--:|--:|--:"
           "|--:|---|"]
    minutes = hours = 0.0
    stamps = []
    for arm in g.all_arms:
        for r in arm.runs:
            t, test = r.train, r.bleu.get("test", {})
            minutes += t.get("train_minutes", 0.0)
            hours += t.get("cpu_hours", t.get("gpu_hours", 0.0))
            stamps.append(r.timestamp)
            h = (f"{t['gpu_hours']:.3f} GPU" if "gpu_hours" in t else
                 f"{t['cpu_hours']:.3f} CPU" if "cpu_hours" in t else "—")
            out.append(_row([
                r.name, arm.name, r.seed, _num(t.get("epochs"), "d"),
                _num(value(r, "val_loss"), ".4f"), _num(value(r, "bleu"), ".2f"),
                _num(test.get("chrf"), ".2f"), _num(t.get("train_minutes"), ".2f"), h,
                t.get("stopped_by", "—")]))
    n = sum(len(a.runs) for a in g.all_arms)
    stamps = sorted(s for s in stamps if s)
    span = f"; finished between {stamps[0]} and {stamps[-1]}" if stamps else ""
    out += ["", f"Cost: {n} runs, {minutes:.1f} training minutes in all "
                f"({hours:.2f} CPU/GPU hours: wall hours × threads){span}."]
    return out
