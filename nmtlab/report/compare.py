"""Runs grouped into arms (one configuration, its training seeds), each arm compared seed by
seed with its reference (the baseline, or the entry its catalogue entry names `against`),
and the corrections across hypotheses.

A group holds the runs of one code version, one baseline params file and one provenance
(device, dtype, torch, code fingerprint, batch_tokens, budget stop): runs that differ in
any of these are never pooled into one arm nor paired. Arms are matched to catalogue
entries by their resolved params (the defaults filled in), never by name.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nmt import trainlog

from ..hypotheses.catalogue import BASELINE, Hypothesis, flatten, resolved
from ..metrics import METRICS
from . import calibration, sequential
from . import significance as sig
from .experiments import SEED_KEY, Run

SAME = "same"  # outcome of an arm whose every per-seed Δ is exactly 0
REPLICATE_RE = re.compile(r"-s\d+$")  # ENTRY-sK, as the queue names replicates
AA_RUNS = 6  # baseline seeds whose every pair the single-run bootstrap is tried on


def value(run: Run, metric: str) -> float:
    """The run's value of a metric; NaN if it has none (no test reference, say)."""
    if metric == "bleu":
        stats = run.sentences.get("test")
        return float(sig.corpus_bleu(stats)) if stats is not None else float("nan")
    return float(run.train.get("best_val_loss", float("nan")))


@dataclass
class Arm:
    """One configuration: its resolved params, the training seed aside, and its runs."""

    name: str
    diff: dict[str, Any]
    runs: list[Run]
    entry: Hypothesis | None = None  # the catalogue entry whose params it has

    @property
    def metric(self) -> str:
        return self.entry.metric if self.entry else "bleu"

    @property
    def hypothesis(self) -> str:
        return self.entry.hypothesis if self.entry else ""

    def values(self, metric: str) -> np.ndarray:
        return np.array([value(r, metric) for r in self.runs])

    def by_seed(self) -> dict[int, Run]:
        return {r.seed: r for r in self.runs if isinstance(r.seed, int)}


@dataclass
class Comparison:
    """An arm against its reference on one metric."""

    arm: str
    reference: str
    metric: str
    margin: float  # the smallest effect worth knowing (δ)
    claim: str = "better"
    kind: str = "none"  # paired | unpaired | single run | same | none
    n: int = 0  # runs of the arm
    n_reference: int = 0
    seeds: int = 0  # pairs (or arm runs) the verdict rests on
    delta: float = float("nan")
    low: float = float("nan")
    high: float = float("nan")
    level: float = 1 - sig.ALPHA  # of the interval
    p_value: float = float("nan")  # at the look the verdict rests on
    sequential_p: float = float("nan")  # over every look (sequential.decide); p when one look
    tost_p: float = float("nan")
    power: float = float("nan")  # of a test at alpha 0.05 with this se, at Δ = margin
    outcome: str = "none"  # sequential.OUTCOMES, SAME or none
    verdict: str = "too few runs"
    agree: int = 0
    seed_deltas: list[float] = field(default_factory=list)
    note: str = ""


@dataclass
class Group:
    """Runs of one code version, baseline params file and provenance."""

    code: str
    commits: list[str]
    provenance: dict[str, Any]
    design: str  # fixed | sequential
    baseline: Arm | None
    arms: list[Arm]
    named: dict[str, Comparison] = field(default_factory=dict)  # arm -> vs its reference
    both: list[tuple[str, dict[str, Comparison]]] = field(default_factory=list)
    corrected: dict[str, dict[str, float]] = field(default_factory=dict)  # arm -> holm/bh
    missing: list[str] = field(default_factory=list)  # catalogue entries without runs here
    single_run_aa: tuple[int, int] | None = None

    @property
    def all_arms(self) -> list[Arm]:
        return ([self.baseline] if self.baseline else []) + self.arms


def dedupe(runs: list[Run]) -> list[Run]:
    """One run per identity (code, provenance, params with the seed): a commit's own results
    restored by an experiment of the same params, or a run collected twice, count once; the
    experiment's name is kept. Runs with the same outputs but other params stay apart."""
    out: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: (r.rev == r.baseline_rev, r.timestamp), reverse=True):
        out[run.identity] = run
    return sorted(out.values(), key=lambda r: (r.timestamp, r.name))


def group_runs(runs: list[Run], catalogue: list[Hypothesis],
               sequential_codes: set[str] = frozenset()) -> list[Group]:
    """Groups of runs, newest code version first, each analysed: every arm against its
    reference on its named metric, and on both metrics against the baseline.
    sequential_codes: code versions swept in rounds (sweeplog.sequential_codes())."""
    by_version: dict[tuple[str, str, str], list[Run]] = {}
    for run in dedupe(runs):
        base = {k: v for k, v in run.base_params.items() if k != SEED_KEY}
        key = (run.code, json.dumps(base, sort_keys=True),
               json.dumps(run.provenance, sort_keys=True))
        by_version.setdefault(key, []).append(run)
    groups = [_group(members, catalogue, members[0].code in sequential_codes)
              for members in by_version.values()]
    return sorted(groups, key=lambda g: max(r.timestamp for a in g.all_arms for r in a.runs),
                  reverse=True)


def _group(members: list[Run], catalogue: list[Hypothesis], sequential_design: bool) -> Group:
    arms: dict[str, list[Run]] = {}
    for run in members:
        arms.setdefault(run.arm_key, []).append(run)
    base_params = members[0].base_params
    built = [_arm(json.loads(key), sorted(rs, key=_seed_order), base_params, catalogue)
             for key, rs in arms.items()]
    names = [a.name for a in built]
    for arm in built:  # two plain sweeps under one name: each named by its params
        if names.count(arm.name) > 1 and arm.entry is None:
            arm.name = format_diff(arm.diff)
    baseline = next((a for a in built if not a.diff), None)
    group = Group(members[0].code, sorted({r.baseline_rev for r in members}),
                  members[0].provenance, "sequential" if sequential_design else "fixed",
                  baseline, sorted((a for a in built if a.diff), key=lambda a: a.name))
    matched = {a.entry.name for a in group.arms if a.entry}
    group.missing = [h.name for h in catalogue if h.name != BASELINE and h.name not in matched]
    analyse(group)
    return group


def _seed_order(run: Run) -> tuple:
    seed = run.seed
    return (0, seed, run.name) if isinstance(seed, int) else (1, str(seed), run.name)


def _arm(diff: dict[str, Any], runs: list[Run], base_params: dict,
         catalogue: list[Hypothesis]) -> Arm:
    """The arm of these runs, named after the catalogue entry with the same resolved params;
    runs matching no entry (a plain `dvc exp run -S` sweep) are named after their diff."""
    config = {k: v for k, v in flatten(runs[0].params).items() if k != SEED_KEY}
    for h in catalogue:
        try:
            if resolved(base_params, h.set) == config:
                return Arm(h.name if diff else BASELINE, diff, runs, h)
        except KeyError:
            continue  # the entry sets a key these runs' params do not have
    stems = {REPLICATE_RE.sub("", r.name) for r in runs}
    # a display name only: its experiments' shared name, unless an entry has it
    stem = stems.pop() if len(stems) == 1 else ""
    taken = {h.name for h in catalogue} | {BASELINE}
    return Arm(stem if stem and stem not in taken and not stem.startswith("commit-")
               else format_diff(diff), diff, runs)


def format_diff(diff: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}"
                     for k, v in diff.items()) or "—"


def analyse(group: Group) -> None:
    """Every comparison of the group, the corrections and the single-run A/A count."""
    by_name = {a.name: a for a in group.arms}
    for arm in group.arms:
        against = arm.entry.against if arm.entry else BASELINE
        ref = group.baseline if against == BASELINE else by_name.get(against)
        margin = arm.entry.min_effect if arm.entry else METRICS[arm.metric].min_effect
        claim = arm.entry.claim if arm.entry else "better"
        group.named[arm.name] = compare(arm, ref, arm.metric, group.design, margin, claim) \
            if ref else Comparison(arm.name, against, arm.metric, margin, claim,
                                   verdict=f"no runs of {against} here", n=len(arm.runs))
        for reference in [group.baseline] + ([ref] if ref and ref is not group.baseline
                                              else []):
            if reference is None:
                continue
            label = arm.name if reference is group.baseline else f"{arm.name} vs {ref.name}"
            group.both.append((label, {m: compare(
                arm, reference, m, group.design,
                margin if m == arm.metric else METRICS[m].min_effect,
                claim if m == arm.metric else "better") for m in METRICS}))
    _correct(group)
    if group.baseline:
        group.single_run_aa = single_run_aa(group.baseline)


def _correct(group: Group) -> None:
    tested = [n for n, c in group.named.items() if not np.isnan(c.sequential_p)]
    if tested:
        ps = np.array([group.named[n].sequential_p for n in tested])
        for name, h, b in zip(tested, sig.holm(ps), sig.benjamini_hochberg(ps)):
            group.corrected[name] = {"holm": float(h), "bh": float(b)}


def compare(arm: Arm, ref: Arm, metric: str, design: str = "fixed", margin: float = 0.0,
            claim: str = "better") -> Comparison:
    """`arm` against `ref` on `metric`: paired by seed where at least two seeds pair, else
    Welch's test over the runs, else (BLEU, one run) the single-run paired bootstrap."""
    c = Comparison(arm.name, ref.name, metric, margin, claim, n=len(arm.runs),
                   n_reference=len(ref.runs))
    if np.isnan(arm.values(metric)).any() or np.isnan(ref.values(metric)).any():
        c.verdict, c.note = "no data", f"some runs have no {METRICS[metric].label}"
        return c
    if metric == "bleu" and len({r.refs_sha256.get("test") for r in arm.runs + ref.runs}) != 1:
        c.verdict, c.note = "other test set", "the test references differ: not paired"
        return c
    mine, theirs = arm.by_seed(), ref.by_seed()
    pairs = sorted(set(mine) & set(theirs))
    if len(pairs) >= sig.MIN_RUNS:
        c.note = (f"{len(arm.runs) - len(pairs)} run(s) without a reference seed left out"
                  if len(pairs) < len(arm.runs) else "")
        return _paired(c, [mine[k] for k in pairs], [theirs[k] for k in pairs], design)
    if min(len(arm.runs), len(ref.runs)) >= sig.MIN_RUNS:
        return _unpaired(c, arm.runs, ref.runs)
    if metric == "bleu":
        return _single_run(c, arm.runs[0], theirs.get(arm.runs[0].seed, ref.runs[0]))
    return c


def _pseudo(runs: list[Run], metric: str) -> np.ndarray | None:
    """Pseudo-values of the runs' test BLEU when the chosen test counts the sentences."""
    if metric != "bleu" or calibration.CHOSEN["bleu"] != "seeds + sentences":
        return None
    return sig.pseudo_values(np.stack([r.sentences["test"] for r in runs]))


def _paired(c: Comparison, exp: list[Run], ref: list[Run], design: str) -> Comparison:
    e, b = (np.array([value(r, c.metric) for r in rs]) for rs in (exp, ref))
    c.kind, c.seeds = "paired", len(e)
    if (e == b).all():
        c.kind, c.outcome, c.delta = SAME, SAME, 0.0
        c.seed_deltas, c.agree = [0.0] * len(e), 0
        c.verdict = _same(c, exp, ref)
        return c
    chosen = sequential.SEQUENTIAL if design == "sequential" else sequential.fixed(len(e))
    m = METRICS[c.metric]
    out = sequential.decide(chosen, e, b, _pseudo(exp, c.metric), _pseudo(ref, c.metric),
                            higher_is_better=m.higher_is_better, margin=c.margin,
                            equivalence_claim=c.claim == "equivalent")
    c.outcome = sequential.OUTCOMES[int(out["outcome"])]
    c.seeds = int(out["seeds"]) or len(e)
    c.delta, c.p_value = float(out["delta"]), float(out["p_value"])
    c.sequential_p, c.tost_p = float(out["sequential_p"]), float(out["tost_p"])
    c.level = 1 - float(out["alpha"]) if not np.isnan(out["alpha"]) else c.level
    c.low, c.high = (float(x) for x in sig.interval(out["delta"], out["se"], out["df"], c.level))
    c.power = float(sig.power(out["se"], out["df"], c.margin))
    deltas = (e - b)[:c.seeds]
    c.seed_deltas = [float(d) for d in deltas]
    c.agree = int(np.sum(np.sign(deltas) == np.sign(c.delta)))
    c.verdict = verdict_text(c)
    return c


def _same(c: Comparison, exp: list[Run], ref: list[Run]) -> str:
    """The verdict of an arm equal to its reference in every seed: on a training metric,
    whether the whole training was the same or only up to the best epoch."""
    if c.metric == "bleu":
        return f"same test BLEU as {c.reference} in every seed"
    logs = [[trainlog.parse(r.epochs_tsv, r.name) for r in rs] for rs in (exp, ref)]
    curves = [[[(row["train_loss"], row["val_loss"]) for row in rows] for rows in side]
              for side in logs]
    if curves[0] == curves[1]:
        return f"same training as {c.reference}"
    return f"same best epoch as {c.reference} (the change acts after it)"


def _unpaired(c: Comparison, exp: list[Run], ref: list[Run]) -> Comparison:
    """Welch's test (with the sentences' main effect on BLEU), one look at alpha 0.05."""
    e, b = (np.array([value(r, c.metric) for r in rs]) for rs in (exp, ref))
    res = sig.unpaired(e, b, _pseudo(exp, c.metric), _pseudo(ref, c.metric))
    c.kind, c.seeds = "unpaired", len(e)
    c.delta = float(res["delta"])
    c.p_value = c.sequential_p = float(sig.p_value(res["delta"], res["se"], res["df"]))
    c.low, c.high = (float(x) for x in sig.interval(res["delta"], res["se"], res["df"]))
    c.tost_p = float(sig.tost(res["delta"], res["se"], res["df"], c.margin))
    c.power = float(sig.power(res["se"], res["df"], c.margin))
    better = (c.delta > 0) == METRICS[c.metric].higher_is_better
    c.outcome = ("helps" if better else "hurts") if c.p_value < sig.ALPHA and c.delta else \
        "equivalent" if c.tost_p < sig.ALPHA else "undecided"
    c.seed_deltas = [float(x) for x in e - b.mean()]
    c.agree = int(np.sum(np.sign(e - b.mean()) == np.sign(c.delta)))
    c.verdict = verdict_text(c)
    c.note = "; ".join(filter(None, [c.note, "seeds do not pair: unpaired"]))
    return c


def _single_run(c: Comparison, exp: Run, ref: Run) -> Comparison:
    res = sig.paired_bootstrap(ref.sentences["test"], exp.sentences["test"])
    c.kind, c.seeds = "single run", 1
    c.delta, c.low, c.high = (float(res[k]) for k in ("delta", "delta_low", "delta_high"))
    c.p_value = c.sequential_p = float(res["p_value"])
    better = c.delta > 0
    c.outcome = ("helps" if better else "hurts") if c.p_value < sig.ALPHA and c.delta else \
        "undecided"
    c.verdict = verdict_text(c) + " (test-set noise only)"
    c.note = "test-set noise only"
    return c


def verdict_text(c: Comparison) -> str:
    """The verdict in words."""
    equivalence = c.claim == "equivalent"
    return {
        "helps": "helps", "hurts": "hurts",
        "equivalent": f"no effect beyond ±{c.margin:g}",
        "futile": f"does not help (futility, {c.seeds} seeds)",
        "undecided": "not shown equivalent" if equivalence else "no significant difference",
        "pending": f"undecided so far ({c.seeds} seeds)",
    }.get(c.outcome, c.verdict)


def single_run_aa(base: Arm) -> tuple[int, int] | None:
    """(significant, pairs): the single-run paired bootstrap on every pair of the baseline's
    first AA_RUNS seeds, two runs of the same configuration."""
    runs = [r for r in base.runs if "test" in r.sentences][:AA_RUNS]
    if len(runs) < 2:
        return None
    stats = np.stack([r.sentences["test"] for r in runs])
    pairs = [(i, j) for i in range(len(runs)) for j in range(i + 1, len(runs))]
    res = sig.paired_bootstrap(stats[[i for i, _ in pairs]], stats[[j for _, j in pairs]])
    significant = (res["p_value"] < sig.ALPHA) & (res["delta"] != 0)
    return int(significant.sum()), len(pairs)
