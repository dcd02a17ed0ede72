"""Runs grouped into arms (one configuration, its training seeds pooled), each arm tested
against the baseline's replicates, the corrections across hypotheses, and the A/A check."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import significance as sig
from .experiments import SEED_KEY, Run, replicate_of

AA_RUNS = 6  # baseline seeds the A/A check splits 3 vs 3


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    fmt: str


METRICS = {
    "bleu": Metric("bleu", "test BLEU", True, ".2f"),
    "val_loss": Metric("val_loss", "validation loss (best epoch)", False, ".4f"),
}


def value(run: Run, metric: str) -> float:
    """The run's value of a metric; NaN if it has none (no test reference, say)."""
    if metric == "bleu":
        stats = run.sentences.get("test")
        return float(sig.corpus_bleu(stats)) if stats is not None else float("nan")
    return float(run.train.get("best_val_loss", float("nan")))


@dataclass
class Arm:
    """One configuration: a params diff against the baseline, the training seed aside."""

    name: str
    diff: dict[str, Any]
    runs: list[Run]
    hypothesis: str = ""  # hypotheses.yaml's sentence, when the diff is a catalogue entry
    metric: str = "bleu"  # the metric the hypothesis names

    def values(self, metric: str) -> np.ndarray:
        return np.array([value(r, metric) for r in self.runs])


@dataclass
class Test:
    metric: str
    kind: str  # pooled | single run | none
    n_base: int
    n_exp: int
    delta: float = float("nan")
    low: float = float("nan")
    high: float = float("nan")
    p_value: float = float("nan")
    verdict: str = "too few runs"
    agree: int = 0
    seed_deltas: list[float] = field(default_factory=list)  # each run minus the baseline mean
    note: str = ""


@dataclass
class Group:
    """Runs of one code version and one baseline params file (any number of commits)."""

    code: str
    commits: list[str]
    baseline: Arm | None
    arms: list[Arm]
    tests: dict[str, dict[str, Test]] = field(default_factory=dict)  # arm -> metric -> Test
    corrected: dict[str, dict[str, float]] = field(default_factory=dict)  # arm -> holm/bh -> p
    aa: dict[str, Any] = field(default_factory=dict)


def dedupe(runs: list[Run]) -> list[Run]:
    """One run per set of translations: a commit's results restored by an experiment (or
    collected twice) count once; the experiment's name is kept."""
    out: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: (r.rev != r.baseline_rev, r.timestamp)):
        out[run.outputs_sha256 or run.rev] = run
    return sorted(out.values(), key=lambda r: (r.timestamp, r.name))


def group_runs(runs: list[Run], catalogue: dict[str, tuple[dict, str, str]]) -> list[Group]:
    """catalogue: entry name -> (its params changes, hypothesis sentence, metric)."""
    by_version: dict[tuple[str, str], list[Run]] = {}
    for run in dedupe(runs):
        base = {k: v for k, v in run.base_params.items() if k != SEED_KEY}
        by_version.setdefault((run.code, json.dumps(base, sort_keys=True)), []).append(run)
    groups = []
    for (code, _), members in by_version.items():
        arms: dict[str, list[Run]] = {}
        for run in members:
            arms.setdefault(run.arm_key, []).append(run)
        built = [_arm(key, sorted(rs, key=_seed_order), catalogue) for key, rs in arms.items()]
        baseline = next((a for a in built if not a.diff), None)
        others = sorted((a for a in built if a.diff), key=lambda a: a.name)
        commits = sorted({r.baseline_rev for r in members})
        groups.append(Group(code, commits, baseline, others))
    for g in groups:
        analyse(g)
    return groups


def _seed_order(run: Run) -> tuple:
    seed = run.seed
    return (0, seed, run.name) if isinstance(seed, int) else (1, str(seed), run.name)


def _arm(key: str, runs: list[Run], catalogue: dict[str, tuple[dict, str, str]]) -> Arm:
    diff = json.loads(key)
    for name, (changes, hypothesis, metric) in catalogue.items():
        if changes == diff:
            return Arm(name, diff, runs, hypothesis, metric)
    stems = {replicate_of(r.name) for r in runs}
    name = stems.pop() if len(stems) == 1 else format_diff(diff)
    return Arm(name, diff, runs)


def format_diff(diff: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}"
                     for k, v in diff.items()) or "—"


def analyse(group: Group) -> None:
    base = group.baseline
    for arm in group.arms:
        group.tests[arm.name] = {m: test(base, arm, m) for m in METRICS}
    tested = [a.name for a in group.arms if not np.isnan(group.tests[a.name][a.metric].p_value)]
    if tested:
        ps = np.array([group.tests[n][_metric(group, n)].p_value for n in tested])
        for name, h, b in zip(tested, sig.holm(ps), sig.benjamini_hochberg(ps)):
            group.corrected[name] = {"holm": float(h), "bh": float(b)}
    if base:
        group.aa = aa_check(base)


def _metric(group: Group, arm_name: str) -> str:
    return next(a.metric for a in group.arms if a.name == arm_name)


def test(base: Arm | None, arm: Arm, metric: str) -> Test:
    m = METRICS[metric]
    if base is None:
        return Test(metric, "none", 0, len(arm.runs), note="no baseline run")
    b_vals, e_vals = base.values(metric), arm.values(metric)
    out = Test(metric, "none", len(b_vals), len(e_vals))
    if np.isnan(b_vals).any() or np.isnan(e_vals).any():
        out.verdict, out.note = "no data", f"some runs have no {m.label}"
        return out
    out.seed_deltas = list(e_vals - b_vals.mean())
    out.delta = float(e_vals.mean() - b_vals.mean())
    out.agree = sig.agreeing(b_vals, e_vals)
    if metric == "bleu":
        refs = {r.refs_sha256.get("test") for r in base.runs + arm.runs}
        if len(refs) != 1:
            out.verdict, out.note = "other test set", "the test references differ: not paired"
            return out
        b_stats = np.stack([r.sentences["test"] for r in base.runs])
        e_stats = np.stack([r.sentences["test"] for r in arm.runs])
        if min(len(b_vals), len(e_vals)) >= sig.MIN_RUNS:
            res = sig.pooled_bleu(b_stats, e_stats)
            out.kind = "pooled"
        else:
            # one run on a side: pair it with the baseline run of the same seed, if any
            seeds = [r.seed for r in base.runs]
            i = seeds.index(arm.runs[0].seed) if arm.runs[0].seed in seeds else 0
            res = sig.paired_bootstrap(b_stats[i], e_stats[0])
            res = {**res, "low": res["delta_low"], "high": res["delta_high"]}
            out.kind, out.note = "single run", "test-set noise only"
            out.delta = float(res["delta"])
    else:
        res = sig.welch(b_vals, e_vals)
        out.kind = "pooled"
        if np.isnan(res["p_value"]):
            out.kind = "none"
    out.low, out.high, out.p_value = (float(res["low"]), float(res["high"]),
                                      float(res["p_value"]))
    out.verdict = sig.verdict(out.delta, out.p_value, m.higher_is_better)
    if out.kind == "single run":
        out.verdict += " (test-set noise only)"
    return out


def aa_check(base: Arm) -> dict[str, Any]:
    """The baseline's first AA_RUNS seeds split 3 vs 3 in every way, each split tested as if
    it were a hypothesis; and today's single-run paired bootstrap on every pair of them."""
    runs = base.runs[:AA_RUNS]
    out: dict[str, Any] = {"n": len(base.runs), "used": [r.seed for r in runs]}
    if len(runs) >= 2 and all("test" in r.sentences for r in runs):
        stats = np.stack([r.sentences["test"] for r in runs])
        pairs = [(i, j) for i in range(len(runs)) for j in range(i + 1, len(runs))]
        res = sig.paired_bootstrap(stats[[i for i, _ in pairs]], stats[[j for _, j in pairs]])
        significant = (res["p_value"] < sig.ALPHA) & (res["delta"] != 0)
        out["single_run"] = (int(significant.sum()), len(pairs))
    if len(runs) < AA_RUNS:
        return out
    splits = sig.aa_splits(AA_RUNS)
    first, second = (np.array([s[k] for s in splits]) for k in (0, 1))
    for metric in METRICS:
        vals = np.array([value(r, metric) for r in runs])
        if np.isnan(vals).any():
            continue
        if metric == "bleu":
            stats = np.stack([r.sentences["test"] for r in runs])
            res = sig.pooled_bleu(stats[first], stats[second])
        else:
            res = sig.welch(vals[first], vals[second])
        calm = [sig.verdict(d, p, METRICS[metric].higher_is_better) == "no significant difference"
                for d, p in zip(res["delta"], res["p_value"])]
        out[metric] = (int(sum(calm)), len(splits))
    return out
