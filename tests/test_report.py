"""The hypothesis report: significance against sacreBLEU's CLI, baseline choice, and end to
end on tiny experiments made with the real `dvc exp run` (including a budget-stopped one)."""
from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

import nmtlab.report as report

from . import e2e
from .conftest import synthetic_pairs

SACREBLEU = str(Path(sys.executable).parent / "sacrebleu")
VERDICTS = {"helps", "hurts", "no significant difference"}


def cli_paired_bs(ref: Path, base: Path, exp: Path) -> list[dict]:
    """`sacrebleu REF -i BASE EXP --paired-bs` as a user runs it: [baseline, system] results."""
    proc = subprocess.run([SACREBLEU, str(ref), "-i", str(base), str(exp), "--paired-bs",
                           "-f", "json"], capture_output=True, text=True, check=True)
    return [entry["BLEU"] for entry in json.loads(proc.stdout)]


def noisy(lines: list[str], drop: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(w for w in line.split() if rng.random() >= drop) for line in lines]


# ---- significance and baseline choice, no dvc -------------------------------------------
@pytest.mark.parametrize("drop_base, drop_exp", [(0.3, 0.1), (0.2, 0.2), (0.15, 0.2)])
def test_paired_bootstrap_matches_sacrebleu_cli(tmp_path, drop_base, drop_exp):
    refs = [en for _, en in synthetic_pairs(200, seed=7)]
    base, exp = noisy(refs, drop_base, 1), noisy(refs, drop_exp, 2)
    files = {}
    for name, text in (("ref", refs), ("base", base), ("exp", exp)):
        files[name] = tmp_path / f"{name}.txt"
        files[name].write_text("".join(t + "\n" for t in text), encoding="utf-8")
    cli_base, cli_exp = cli_paired_bs(files["ref"], files["base"], files["exp"])
    sig = report.paired_bootstrap(base, exp, refs)
    assert sig.p_value == pytest.approx(cli_exp["p_value"], abs=1e-12)
    assert sig.exp_bleu == pytest.approx(cli_exp["score"], abs=1e-9)
    assert sig.base_bleu == pytest.approx(cli_base["score"], abs=1e-9)
    assert (sig.exp_mean, sig.exp_ci) == pytest.approx((cli_exp["mean"], cli_exp["ci"]), abs=1e-9)
    assert (sig.base_mean, sig.base_ci) == pytest.approx((cli_base["mean"], cli_base["ci"]),
                                                         abs=1e-9)
    # ΔBLEU's interval comes from the very resamples the CLI drew.
    assert sig.delta_mean == pytest.approx(cli_exp["mean"] - cli_base["mean"], abs=1e-4)
    assert sig.delta_low <= sig.delta_mean <= sig.delta_high
    assert "bs:1000" in sig.signature and "seed:12345" in sig.signature
    assert report.verdict(sig) in VERDICTS
    if drop_base == 0.3:
        assert report.verdict(sig) == "helps" and sig.delta_low > 0


def test_identical_systems_are_no_significant_difference():
    refs = [en for _, en in synthetic_pairs(50, seed=3)]
    hyps = noisy(refs, 0.2, 0)
    sig = report.paired_bootstrap(hyps, hyps, refs)
    assert sig.delta == 0 and sig.delta_low == sig.delta_high == 0
    assert report.verdict(sig) == "no significant difference"


def test_params_diff_lists_changed_keys_dotted():
    base = {"seed": 1, "model": {"activation": "relu", "d_model": 256},
            "optim": {"betas": [0.9, 0.98]}}
    exp = {"seed": 1, "model": {"activation": "gelu", "d_model": 256},
           "optim": {"betas": [0.9, 0.95]}, "train": {"budget_minutes": 5.0}}
    diff = report.params_diff(base, exp)
    assert diff == {"model.activation": "gelu", "optim.betas": [0.9, 0.95],
                    "train.budget_minutes": 5.0}
    assert report._format_diff(diff) == ("model.activation=gelu, optim.betas=[0.9, 0.95], "
                                         "train.budget_minutes=5.0")
    assert report._format_diff({}) == "—"


def _exp_show_row(rev: str, name: str | None, params: dict, metrics: bool, exps=None) -> dict:
    files = ("data/train/metrics.json", "data/bleu/metrics.json")
    data = {"rev": rev, "timestamp": "2026-01-01T00:00:00",
            "params": {"params.yaml": {"data": params}},
            "metrics": {f: ({"data": {"epochs": 2, "stopped_by": "epochs"}} if metrics else
                            {"error": {"type": "FileNotFoundError", "msg": "no"}})
                        for f in files}}
    return {"rev": rev, "name": name, "data": data, "error": None, "experiments": exps}


def _exp(rev: str, name: str, params: dict, state: str | None = None) -> dict:
    row = _exp_show_row(rev, name, params, metrics=True)
    if state == "failed":
        row["error"] = {"msg": "Experiment run failed", "type": ""}
    return {"revs": [row], "name": name,
            "executor": {"state": state, "local": {"log": "/x/run.out"}} if state else None}


@pytest.mark.parametrize("commit_has_results", [True, False])
def test_baseline_is_the_commit_else_the_experiment_named_baseline(commit_has_results):
    params = {"model": {"activation": "relu"}}
    gelu = {"model": {"activation": "gelu"}}
    rows = [_exp_show_row("workspace", None, params, True),
            _exp_show_row("c" * 40, "main", params, commit_has_results, exps=[
                _exp("a" * 40, "gelu", gelu), _exp("b" * 40, "baseline", params),
                _exp("d" * 40, "broken", gelu, state="failed"),
                _exp("e" * 40, "waiting", gelu, state="queued")])]
    [group] = report.parse_exp_show(rows)
    report.label_runs([group])
    report.choose_reference(group)
    by_name = {r.name: r for r in group.experiments}
    assert by_name["broken"].state == "failed" and by_name["broken"].train == {}
    assert "run.out" in by_name["broken"].error
    assert by_name["waiting"].state == "queued"
    if commit_has_results:
        assert group.reference is group.commit and "dvc.lock" in group.reference_how
    else:
        assert group.commit.state == "no results"
        assert group.reference is by_name["baseline"]
        assert "experiment `baseline`" in group.reference_how
    rows_out = report.compare(group)  # outputs are not read here: nothing to pair
    names = [r.run.name for r in rows_out]
    assert ("main" in names) == commit_has_results
    assert {r.run.name: r.verdict for r in rows_out}["broken"] == "*failed*"
    md = report.render([group], {group.rev: rows_out}, [], {"gelu": "GELU lowers\n the loss."})
    assert "- `gelu`: GELU lowers the loss." in md
    assert "| broken | model.activation=gelu | — |" in md


# ---- end to end: tiny experiments, the real dvc -----------------------------------------

EXPERIMENTS = {"budget": "train.budget_minutes=1e-09", "beam1": "translate.beam_size=1"}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Baseline committed with its dvc.lock, two experiments from it, the report made."""
    project = e2e.make_project(tmp_path_factory.mktemp("report") / "proj", overrides={
        "train": {"epochs": 6, "batch_tokens": 300}})
    e2e.use_synthetic_corpus(project)
    e2e.dvc("repro", cwd=project)
    e2e.commit_all(project, "baseline run")
    # --temp leaves the workspace's params alone, so the next experiment starts from the
    # baseline too; the last one runs in the workspace (only translate and later rerun).
    e2e.dvc("exp", "run", "--temp", "-n", "budget", "-S", EXPERIMENTS["budget"], cwd=project)
    e2e.dvc("exp", "run", "-n", "beam1", "-S", EXPERIMENTS["beam1"], cwd=project)
    e2e.run([sys.executable, "-m", "nmtlab.report"], project)
    return project


def table(md: str, header_start: str) -> dict[str, dict[str, str]]:
    """A markdown table of the report as {first cell: {column: cell}}."""
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(header_start))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def significance_lines(md: str) -> dict[str, list[float]]:
    """`name`: BLEU s (μ = m ± ci), baseline BLEU s (μ = m ± ci), p = p  ->  the 7 numbers."""
    found = {}
    for name, rest in re.findall(r"^- `([^`]+)`: (BLEU .*p = .*)$", md, re.M):
        found[name] = [float(x) for x in re.findall(r"-?\d+\.\d+", rest)]
    return found


@pytest.mark.e2e
def test_report_rows_match_each_experiments_metrics(project):
    md = (project / "reports/experiments.md").read_text()
    rows = table(md, "| experiment | params changed")
    assert set(rows) == {"main", *EXPERIMENTS}
    assert "Baseline: the results committed with `main`" in md
    assert "nrefs:1|bs:1000|seed:12345" in md
    assert rows["main"]["verdict"] == "baseline" and rows["main"]["params changed"] == "—"
    for name, change in EXPERIMENTS.items():
        assert rows[name]["params changed"] == change
    for name, rev in (("main", "HEAD"), *((n, n) for n in EXPERIMENTS)):
        bleu = json.loads(e2e.read_at(project, "data/bleu/metrics.json", rev))
        train = json.loads(e2e.read_at(project, "data/train/metrics.json", rev))
        row = rows[name]
        assert row["test BLEU"] == f"{bleu['test']['bleu']:.2f}"
        assert row["test chrF"] == f"{bleu['test']['chrf']:.2f}"
        assert row["best val loss"] == f"{train['best_val_loss']:.4f}"
        assert row["peak MB"] == f"{train['peak_memory_mb']:,.0f}"
        assert row["epochs"].startswith(str(train["epochs"]))
    for name in EXPERIMENTS:
        row = rows[name]
        delta, low, high = map(float, re.findall(r"[-+]\d+\.\d+", row["ΔBLEU [95% CI]"]))
        p = float(row["p"])
        assert low <= high and row["verdict"] in VERDICTS
        expected = ("no significant difference" if p >= 0.05 else
                    "helps" if delta > 0 else "hurts")
        assert row["verdict"] == expected
    assert rows["budget"]["epochs"] == "1 (budget)"
    assert "`budget`: training stopped by budget after 1 epoch(s)" in md
    cost = table(md, "| experiment | device")
    assert cost["budget"]["stopped by"] == "budget" and "CPU h" in cost["main"]["CPU/GPU hours"]
    for png in ("experiments_val_loss.png", "experiments_train_loss.png", "experiments_lr.png"):
        assert (project / "reports" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in md


@pytest.mark.e2e
def test_report_significance_equals_sacrebleu_cli_on_the_saved_translations(project, tmp_path):
    md = (project / "reports/experiments.md").read_text()
    rows, details = table(md, "| experiment | params changed"), significance_lines(md)
    ref = tmp_path / "test.tgt"
    ref.write_text(e2e.read_at(project, "data/prepared/test.tgt", "HEAD"), encoding="utf-8")
    base = tmp_path / "main.hyp"
    base.write_text(e2e.read_at(project, "data/translations/test.hyp", "HEAD"), encoding="utf-8")
    for name in EXPERIMENTS:
        hyp = tmp_path / f"{name}.hyp"
        hyp.write_text(e2e.read_at(project, "data/translations/test.hyp", name), encoding="utf-8")
        assert len(hyp.read_text().splitlines()) == 60
        cli_base, cli_exp = cli_paired_bs(ref, base, hyp)
        score, mean, ci, b_score, b_mean, b_ci, p = details[name]
        assert (score, mean, ci) == pytest.approx(
            (cli_exp["score"], cli_exp["mean"], cli_exp["ci"]), abs=6e-5)
        assert (b_score, b_mean, b_ci) == pytest.approx(
            (cli_base["score"], cli_base["mean"], cli_base["ci"]), abs=6e-5)
        assert p == pytest.approx(cli_exp["p_value"], abs=6e-5)
        assert float(rows[name]["p"]) == pytest.approx(cli_exp["p_value"], abs=6e-4)
        delta = float(rows[name]["ΔBLEU [95% CI]"].split()[0])
        assert delta == pytest.approx(cli_exp["score"] - cli_base["score"], abs=6e-3)


@pytest.mark.e2e
def test_budget_stop_still_gives_a_model_that_translates(project):
    """train.budget_minutes (60 ns) ran out in the first step on any machine: the rest of
    the pipeline ran on the partial epoch's checkpoint, and the run says why it stopped."""
    train = json.loads(e2e.read_at(project, "data/train/metrics.json", "budget"))
    assert train["stopped_by"] == "budget"
    assert train["steps"] == 1 and train["epochs"] == 1 and train["tokens_seen"] > 0
    assert train["peak_memory_mb"] > 0 and train["device"] and "cpu_hours" in train
    model_info = json.loads(e2e.read_at(project, "data/model/info.json", "budget"))
    assert model_info["stopped_by"] == "budget" and model_info["epochs_averaged"] == [1]
    hyps = e2e.read_at(project, "data/translations/test.hyp", "budget").splitlines()
    assert len(hyps) == 60 and any(h.strip() for h in hyps)
    bleu = json.loads(e2e.read_at(project, "data/bleu/metrics.json", "budget"))
    assert bleu["test"]["sentences"] == 60 and "bleu" in bleu["test"]
    shown = e2e.dvc("exp", "show", "--csv", cwd=project).stdout
    header, *lines = shown.splitlines()
    assert "stopped_by" in header
    assert any(line.startswith("budget,") and ",budget," in line for line in lines)


@pytest.mark.e2e
def test_report_says_what_is_missing_in_one_line(tmp_path):
    def run_report(cwd: Path) -> subprocess.CompletedProcess:
        return e2e.run([sys.executable, "-m", "nmtlab.report"], cwd, check=False)

    outside = tmp_path / "outside"
    outside.mkdir()
    for package in ("nmt", "nmtlab", "stages"):
        (outside / package).symlink_to(e2e.REPO / package)
    proc = run_report(outside)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {outside}: not a DVC repository root (no .dvc folder); run the report from "
        f"the project root"]

    fresh = e2e.make_project(tmp_path / "fresh")
    proc = run_report(fresh)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: no experiments yet")
    assert len(proc.stderr.strip().splitlines()) == 1
