"""The hypothesis report: every experiment against its baseline, with paired significance.

`python -m nmtlab.report` (`make report`) lists the experiments with
`dvc exp show --json --all-commits`, reads what each one produced from DVC's
cache at the experiment's commit (test translations, references, epoch and step
logs: nothing is retrained or re-translated) and writes reports/experiments.md
with one row per experiment, plus PNGs overlaying every experiment's curves.

Baseline: an experiment is compared with the commit it was run from, when that
commit has results of its own (dvc.lock committed); otherwise with the
experiment named `baseline` under that commit, if there is one. ΔBLEU, its 95%
interval and the p-value come from sacreBLEU's paired bootstrap resampling
(`sacrebleu REF -i BASE EXP --paired-bs`: 1000 resamples, seed 12345).
"""
from __future__ import annotations

import csv
import datetime
import io
import json
import logging
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sacrebleu.significance import PairedTest

from nmt import fsio, paths
from nmt.errors import UserError, main_entry
from nmt.scoring import bleu_metric
from nmt.params import from_dict, load
from nmt.plotting import line_plot

log = logging.getLogger("nmt.report")

REPORT = Path("reports") / "experiments.md"
FIGURES = {  # file -> (log, x column, y column, title, x label, y label)
    "experiments_val_loss.png": ("epochs", "epoch", "val_loss", "Validation loss per epoch",
                                 "epoch", "validation loss"),
    "experiments_train_loss.png": ("epochs", "epoch", "train_loss", "Train loss per epoch",
                                   "epoch", "train loss"),
    "experiments_lr.png": ("steps", "step", "lr", "Learning rate per optimizer step",
                           "optimizer step", "learning rate"),
}
ALPHA = 0.05
BOOTSTRAP_SAMPLES = 1000  # sacreBLEU's --paired-bs-n default
BASELINE_EXP = "baseline"  # the no-change experiment the hypothesis catalogue queues
FILES = {"hyps": paths.TRANSLATIONS / "test.hyp", "refs": paths.PREPARED / "test.tgt",
         "epochs": paths.TRAIN_LOG / "epochs.tsv", "steps": paths.TRAIN_LOG / "steps.tsv"}


# ---- what DVC knows ----------------------------------------------------------------------
@dataclass
class Run:
    """One row: a baseline commit's own results or one experiment."""

    name: str
    rev: str
    params: dict[str, Any]  # params.yaml as a nested dict
    train: dict[str, Any]  # data/train/metrics.json
    bleu: dict[str, Any]  # data/bleu/metrics.json
    timestamp: str = ""
    state: str = "success"  # success | failed | queued | running | no results
    error: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)  # read from DVC: hyps, refs, ...
    label: str = ""  # legend label, unique across the report


@dataclass
class Group:
    """A baseline commit and the experiments run from it."""

    rev: str
    name: str  # branch or tag name, else the short sha
    commit: Run
    experiments: list[Run]
    reference: Run | None = None
    reference_how: str = ""


def dvc_exp_show() -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json", "--all-commits"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise UserError(f"dvc exp show failed: {lines[-1] if lines else proc.returncode}")
    return json.loads(proc.stdout)


def parse_exp_show(rows: list[dict]) -> list[Group]:
    """Baseline commits that have experiments, from `dvc exp show --json` output."""
    groups = []
    for row in rows:
        if row["rev"] == "workspace" or not row.get("experiments"):
            continue
        commit = _run(row["name"] or row["rev"][:7], row)
        experiments = []
        for exp in row["experiments"]:
            for rev in exp.get("revs") or []:
                run = _run(rev.get("name") or exp.get("name") or rev["rev"][:7], rev)
                executor = exp.get("executor") or {}
                state = executor.get("state") or "success"
                if state != "success":
                    _not_run(run, state)
                    log_file = (executor.get("local") or {}).get("log")
                    if state == "failed" and log_file:
                        run.error = _join(run.error, f"its log: {_relative(log_file)}")
                experiments.append(run)
        experiments.sort(key=lambda r: (r.timestamp, r.name))
        groups.append(Group(row["rev"], commit.name, commit, experiments))
    return groups


def _run(name: str, row: dict) -> Run:
    data = row.get("data") or {}
    metrics = data.get("metrics") or {}
    params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
    run = Run(name=name, rev=row["rev"], params=params,
              train=(metrics.get(str(paths.TRAIN_METRICS)) or {}).get("data") or {},
              bleu=(metrics.get(str(paths.BLEU_METRICS)) or {}).get("data") or {},
              timestamp=data.get("timestamp") or "")
    if row.get("error"):
        _not_run(run, "failed")
        run.error = row["error"].get("msg", "")
    elif not run.train or not run.bleu:
        run.state = "no results"
    return run


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _relative(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def _not_run(run: Run, state: str) -> None:
    """A failed, queued or running experiment: the metrics DVC shows are its baseline's."""
    run.state, run.train, run.bleu = state, {}, {}


def read_outputs(run: Run, repo: str = ".") -> None:
    """Fill run.outputs from the DVC cache at the run's commit; note what is missing."""
    from dvc.api import DVCFileSystem

    try:
        fs = DVCFileSystem(repo, rev=run.rev)
    except Exception as e:  # noqa: BLE001 - any DVC/git failure is one note, not a crash
        run.error = f"cannot open its commit: {e}"
        return
    for key, path in FILES.items():
        try:
            run.outputs[key] = fs.read_text(str(path), encoding="utf-8")
        except FileNotFoundError:
            if key != "refs":  # no test reference is a normal case
                run.error = run.error or f"{path} is not in the DVC cache (dvc pull, or rerun)"
        except Exception as e:  # noqa: BLE001
            run.error = run.error or f"{path}: {e}"


def choose_reference(group: Group) -> None:
    """The commit's own results, else its experiment named `baseline`, else none.

    A commit whose metrics are committed but whose translations are not in the cache
    gives way to a `baseline` experiment whose translations are."""
    commit = group.commit if group.commit.state == "success" else None
    named = [r for r in group.experiments if r.name == BASELINE_EXP and r.state == "success"]
    exp = named[-1] if named else None
    if commit and ("hyps" in commit.outputs or not (exp and "hyps" in exp.outputs)):
        group.reference = commit
        group.reference_how = (f"the results committed with `{group.name}` "
                               f"(commit {group.rev[:7]}, its dvc.lock)")
    elif exp:
        group.reference = exp
        why = ("its translations are not in the DVC cache" if commit else
               "dvc.lock not committed")
        group.reference_how = (f"experiment `{exp.label}`, run from commit {group.rev[:7]} "
                               f"with no changes (the commit's own results: {why})")
    else:
        group.reference_how = (f"none: commit {group.rev[:7]} has no results of its own and no "
                               f"experiment is named `{BASELINE_EXP}`, so ΔBLEU is not computed")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def params_diff(base: dict[str, Any], exp: dict[str, Any]) -> dict[str, Any]:
    """Changed keys only, dotted, with the experiment's value (None if it dropped the key)."""
    a, b = flatten(base), flatten(exp)
    return {k: b.get(k) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


# ---- significance ------------------------------------------------------------------------
@dataclass
class Significance:
    base_bleu: float
    exp_bleu: float
    delta: float  # exp - base
    delta_low: float  # 95% interval of the resampled differences
    delta_high: float
    delta_mean: float
    p_value: float
    exp_mean: float  # sacreBLEU's resampled mean and 95% half-width, as its CLI prints
    exp_ci: float
    base_mean: float
    base_ci: float
    signature: str


def paired_bootstrap(base_hyps: list[str], exp_hyps: list[str], refs: list[str], *,
                     tokenize: str = "13a", lowercase: bool = False,
                     n_samples: int = BOOTSTRAP_SAMPLES) -> Significance:
    """sacreBLEU's paired bootstrap test (its PairedTest, as `--paired-bs` runs it), plus a
    95% interval of ΔBLEU from the same resamples: same seed, same index draw."""
    metric = bleu_metric(tokenize, lowercase)
    test = PairedTest([("baseline", base_hyps), ("experiment", exp_hyps)], {"BLEU": metric},
                      references=[refs], test_type="bs", n_samples=n_samples)
    signatures, scores = test()
    base, exp = scores["BLEU"]
    # The differences PairedTest looks at, kept signed here for the interval.
    rng = np.random.default_rng(test._seed or None)
    idxs = rng.choice(len(refs), size=(test.n_samples, len(refs)), replace=True)
    resampled = []
    for hyps in (base_hyps, exp_hyps):
        stats = np.array(metric._extract_corpus_statistics(hyps, [refs]), dtype="float32")
        resampled.append(np.array([metric._compute_score_from_stats(s.sum(0)).score
                                   for s in stats[idxs]]))
    diffs = np.sort(resampled[1] - resampled[0])
    cut = len(diffs) // 40  # sacreBLEU's estimate_ci: 2.5% each side
    return Significance(
        base_bleu=base.score, exp_bleu=exp.score, delta=exp.score - base.score,
        delta_low=float(diffs[cut]), delta_high=float(diffs[len(diffs) - cut - 1]),
        delta_mean=float(diffs.mean()), p_value=float(exp.p_value),
        exp_mean=float(exp.mean), exp_ci=float(exp.ci), base_mean=float(base.mean),
        base_ci=float(base.ci), signature=signatures["BLEU"].format())


def verdict(sig: Significance, alpha: float = ALPHA) -> str:
    if sig.p_value >= alpha or sig.delta == 0:
        return "no significant difference"
    return "helps" if sig.delta > 0 else "hurts"


def lines(text: str) -> list[str]:
    """Lines as the sacreBLEU CLI reads a file: line ends and trailing blanks dropped."""
    return [ln.rstrip() for ln in io.StringIO(text, newline=None)]


def tsv_rows(text: str) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in row.items()}
            for row in csv.DictReader(io.StringIO(text), delimiter="\t")]


# ---- the report --------------------------------------------------------------------------
@dataclass
class Row:
    run: Run
    diff: str
    significance: Significance | None = None
    verdict: str = ""
    notes: list[str] = field(default_factory=list)


def compare(group: Group) -> list[Row]:
    ref = group.reference
    rows = []
    for run in [group.commit, *group.experiments]:
        if run is group.commit and run is not ref:
            continue  # a commit without results is no row; its experiments are
        row = Row(run, _format_diff(params_diff(group.commit.params, run.params)))
        rows.append(row)
        if run.state != "success":
            row.verdict = f"*{run.state}*"
            row.notes.append(f"{run.state}{': ' + run.error if run.error else ''}; no results")
            continue
        if run.error:
            row.notes.append(run.error)
        if run.train.get("stopped_by") not in (None, "", "epochs"):
            row.notes.append(f"training stopped by {run.train['stopped_by'].replace('_', ' ')} "
                             f"after {run.train.get('epochs')} epoch(s)")
        if run is ref:
            row.verdict = "baseline"
            continue
        row.verdict, note = _significance(row, ref)
        if note:
            row.notes.append(note)
    return rows


def _significance(row: Row, ref: Run | None) -> tuple[str, str]:
    run = row.run
    if ref is None:
        return "no baseline", ""
    if "hyps" not in run.outputs or "hyps" not in ref.outputs:
        who = run if "hyps" not in run.outputs else ref
        return "no translations", f"test translations of `{who.label}` cannot be read back"
    if "refs" not in run.outputs or "bleu" not in run.bleu.get("test", {}):
        return "no test reference", "the test set has no reference translation: no test BLEU"
    refs = lines(run.outputs["refs"])
    if ref.outputs.get("refs") is None or lines(ref.outputs["refs"]) != refs:
        return "other test set", "its test references differ from the baseline's: not paired"
    base_hyps, exp_hyps = lines(ref.outputs["hyps"]), lines(run.outputs["hyps"])
    if not len(base_hyps) == len(exp_hyps) == len(refs):
        return "no translations", (f"{len(exp_hyps)} test translations here, {len(base_hyps)} "
                                   f"in the baseline, {len(refs)} references: not paired")
    try:
        bleu = from_dict(run.params).bleu
    except UserError as e:
        return "bad params", str(e)
    row.significance = paired_bootstrap(base_hyps, exp_hyps, refs, tokenize=bleu.tokenize,
                                        lowercase=bleu.lowercase)
    return verdict(row.significance), ""


def _format_diff(diff: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        return v if isinstance(v, str) else json.dumps(v)

    return ", ".join(f"{k}={value(v)}" for k, v in diff.items()) or "—"


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "—"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _epochs(train: dict) -> str:
    stopped = train.get("stopped_by")
    extra = f" ({stopped.replace('_', ' ')})" if stopped and stopped != "epochs" else ""
    return f"{_num(train.get('epochs'), 'd')}{extra}"


def render(groups: list[Group], rows: dict[str, list[Row]], figures: list[str],
           hypotheses: dict[str, str] | None = None) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n_exps = sum(len(g.experiments) for g in groups)
    sigs = {r.significance.signature for rs in rows.values() for r in rs if r.significance}
    out = [
        "# Experiments",
        "",
        f"Made {now} on `{platform.node()}` ({platform.machine()}, {os.cpu_count()} cores) by "
        f"`python -m nmtlab.report` from `dvc exp show --json --all-commits`: {n_exps} "
        f"experiment(s) from {len(groups)} baseline commit(s). Numbers come from each run's "
        f"DVC metrics and cached outputs; nothing was recomputed but the significance tests.",
        "",
        f"Significance: sacreBLEU paired bootstrap resampling of test BLEU against the "
        f"baseline ({BOOTSTRAP_SAMPLES} resamples), verdict at p < {ALPHA}.",
    ]
    out += [f"Signature: `{s}`" for s in sorted(sigs)]
    out += [""] + [f"![{FIGURES[f][3]}]({f})" for f in figures]
    for group in groups:
        out += ["", f"## Run from `{group.name}` (commit {group.rev[:7]})", "",
                f"Baseline: {group.reference_how}.", "",
                "| experiment | params changed | epochs | best val loss | final val loss "
                "| test BLEU | test chrF | ΔBLEU [95% CI] | p | verdict | wall min | tokens/s "
                "| peak MB |",
                "|---|---|---|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|"]
        for row in rows[group.rev]:
            out.append(_main_row(row))
        out += ["", "Cost:", "",
                "| experiment | device | stopped by | CPU/GPU hours | tokens seen | parameters |",
                "|---|---|---|--:|--:|--:|"]
        for row in rows[group.rev]:
            t = row.run.train
            hours = (f"{t['gpu_hours']:.4f} GPU h" if "gpu_hours" in t else
                     f"{t['cpu_hours']:.4f} CPU h" if "cpu_hours" in t else "—")
            out.append(f"| {_cell(row.run.label)} | {_cell(t.get('device', '—'))} "
                       f"| {t.get('stopped_by', '—')} | {hours} | {_num(t.get('tokens_seen'), ',d')} "
                       f"| {_num(t.get('parameters'), ',d')} |")
        notes = [(r.run.label, n) for r in rows[group.rev] for n in r.notes]
        details = [r for r in rows[group.rev] if r.significance]
        tested = [(r.run.label, (hypotheses or {})[r.run.name]) for r in rows[group.rev]
                  if r.run.name in (hypotheses or {})]
        if tested:
            out += ["", "Hypotheses (hypotheses.yaml):", ""]
            out += [f"- `{name}`: {_cell(' '.join(text.split()))}" for name, text in tested]
        if notes:
            out += ["", "Notes:", ""] + [f"- `{name}`: {_cell(n)}" for name, n in notes]
        if details:
            out += ["", "Paired bootstrap, as `sacrebleu REF -i BASE EXP --paired-bs` prints it "
                    "(score, resampled mean ± 95% half-width):", ""]
            for r in details:
                s = r.significance
                out.append(f"- `{r.run.label}`: BLEU {s.exp_bleu:.4f} (μ = {s.exp_mean:.4f} ± "
                           f"{s.exp_ci:.4f}), baseline BLEU {s.base_bleu:.4f} (μ = "
                           f"{s.base_mean:.4f} ± {s.base_ci:.4f}), p = {s.p_value:.4f}")
    out += ["", "## Columns", "",
            "- **params changed**: the experiment's params.yaml against the commit it was run "
            "from, changed keys only.",
            "- **epochs**: epochs trained; why training stopped, if not after `train.epochs` "
            "(budget: `train.budget_minutes` ran out; early stopping).",
            "- **best / final val loss**: validation cross-entropy per target token (never "
            "label-smoothed), the best epoch's and the last one's.",
            "- **test BLEU / chrF**: sacreBLEU scores of the test translations "
            "(data/bleu/metrics.json).",
            "- **ΔBLEU [95% CI]**: test BLEU minus the baseline's, with the 2.5–97.5% range of "
            "the difference over the bootstrap resamples of test sentences.",
            f"- **p**: sacreBLEU's paired bootstrap p-value; **verdict**: helps / hurts when "
            f"p < {ALPHA}, else no significant difference.",
            "- **wall min**: training loop time, validation included; **tokens/s**: target "
            "tokens trained per second; **peak MB**: CUDA max allocated, or the train process's "
            "peak resident memory on CPU.",
            "- **CPU/GPU hours**: wall hours × CPU threads, or GPU wall hours."]
    return "\n".join(out) + "\n"


def _main_row(row: Row) -> str:
    t, test, s = row.run.train, row.run.bleu.get("test", {}), row.significance
    if s:
        delta = f"{s.delta:+.2f} [{s.delta_low:+.2f}, {s.delta_high:+.2f}]"
        p = f"{s.p_value:.3f}"
    else:
        delta = p = "—"
    cells = [row.run.label, row.diff, _epochs(t), _num(t.get("best_val_loss"), ".4f"),
             _num(t.get("final_val_loss"), ".4f"),
             _num(test.get("bleu"), ".2f") if "skipped" not in test else "no reference",
             _num(test.get("chrf"), ".2f") if "skipped" not in test else "no reference",
             delta, p, row.verdict, _num(t.get("train_minutes"), ".2f"),
             _num(t.get("tokens_per_s"), ",.0f"), _num(t.get("peak_memory_mb"), ",.0f")]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def plot_curves(groups: list[Group], dpi: int, out_dir: Path) -> list[str]:
    written = []
    for name, (log_key, x, y, title, xlabel, ylabel) in FIGURES.items():
        series = {}
        for g in groups:
            for run in [g.commit, *g.experiments]:
                if run.state == "success" and log_key in run.outputs:
                    rows = tsv_rows(run.outputs[log_key])
                    if rows:
                        series[run.label] = ([r[x] for r in rows], [r[y] for r in rows])
        if series:
            line_plot(out_dir / name, series, title=f"{title} ({len(series)} runs)",
                      xlabel=xlabel, ylabel=ylabel, dpi=dpi, markers=log_key == "epochs")
            written.append(name)
    return written


def label_runs(groups: list[Group]) -> None:
    """Legend labels: experiment names, with the commit added where a name repeats."""
    runs = [r for g in groups for r in [g.commit, *g.experiments]]
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.name] = counts.get(r.name, 0) + 1
    for g in groups:
        for r in [g.commit, *g.experiments]:
            r.label = r.name if counts[r.name] == 1 else f"{r.name}@{g.rev[:7]}"


def catalogue_hypotheses() -> dict[str, str]:
    """Experiment name -> its one-sentence hypothesis, from hypotheses.yaml if there is one."""
    from . import hypotheses

    if not hypotheses.CATALOGUE.is_file():
        return {}
    try:
        return {h.name: h.hypothesis for h in hypotheses.load()}
    except UserError as e:
        log.warning("hypotheses left out of the report: %s", e)
        return {}


def build(repo: str = ".") -> list[Group]:
    groups = parse_exp_show(dvc_exp_show())
    if not groups:
        raise UserError("no experiments yet: run some with `dvc exp run -n NAME -S key=value` "
                        "(or queue them and `dvc queue start`), then rerun the report")
    label_runs(groups)
    for g in groups:
        for run in [g.commit, *g.experiments]:
            if run.state == "success":
                read_outputs(run, repo)
        choose_reference(g)
    return groups


@main_entry
def main() -> None:
    logging.getLogger("sacrebleu").setLevel(logging.WARNING)
    if not Path(".dvc").is_dir():
        raise UserError(f"{Path.cwd()}: not a DVC repository root (no .dvc folder); "
                        f"run the report from the project root")
    dpi = load().plots.dpi
    groups = build()
    rows = {g.rev: compare(g) for g in groups}
    figures = plot_curves(groups, dpi, REPORT.parent)
    fsio.write_text(REPORT, render(groups, rows, figures, catalogue_hypotheses()))
    n = sum(len(g.experiments) for g in groups)
    log.info("wrote %s and %d figure(s): %d experiment(s)", REPORT, len(figures), n)


if __name__ == "__main__":
    main()
