"""The hypothesis report: runs grouped into replicates by their params diff minus the seed,
pooled tests and corrections, the A/A check, forest plots, run records that rebuild the
report; and end to end on a tiny project with seeds queued by `nmtlab hypotheses queue`."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nmtlab.report import compare, experiments, markdown
from nmtlab.report import significance as sig
from nmtlab.report.__main__ import write_figures

from . import e2e
from .test_significance import simulate

PNG = b"\x89PNG\r\n\x1a\n"
BASE = {"seed": 1234, "model": {"activation": "relu", "dropout": 0.1}, "bleu": {}}


def make_run(name: str, stats: np.ndarray, val_loss: float, seed: int, **changes) -> \
        experiments.Run:
    params = json.loads(json.dumps(BASE))
    params["seed"] = seed
    for dotted, v in changes.items():
        group, key = dotted.split("__")
        params[group][key] = v
    epochs = "epoch\ttrain_loss\tval_loss\n" + "".join(
        f"{e}\t{val_loss + 1 / e}\t{val_loss + 0.5 / e}\n" for e in (1, 2, 3))
    return experiments.Run(
        name=name, rev=f"{abs(hash(name)):040x}"[:40], baseline_rev="c" * 40, params=params,
        base_params=BASE, train={"best_val_loss": val_loss, "epochs": 3, "train_minutes": 2.0,
                                 "cpu_hours": 0.07, "stopped_by": "epochs"},
        bleu={"test": {"bleu": round(float(sig.corpus_bleu(stats)), 2), "chrf": 50.0}},
        timestamp=f"2026-01-01T00:00:{seed:02d}", code="abc", epochs_tsv=epochs,
        sentences={"test": stats, "val": stats[:50]}, refs_sha256={"test": "r", "val": "v"},
        outputs_sha256=name)


@pytest.fixture(scope="module")
def runs() -> list[experiments.Run]:
    """6 baseline seeds; gelu (3 seeds) far better; a plain sweep of dropout (3 seeds, auto
    names) with no effect; one single run of swiglu."""
    rng = np.random.default_rng(5)
    runs = simulate(rng, 1, 6, 400)[0]  # (2 arms, 6 runs, 400 sentences, 6): one test set
    base, same = runs[0], runs[1, :3]
    better = runs[1, 3:].copy()  # a third of the missed n-grams found
    totals = np.clip(better[..., :1] - np.arange(1, 5) + 1, 0, None)
    better[..., 2:] += rng.binomial(totals - better[..., 2:], 0.33)
    out = [make_run(f"baseline-s{k + 1}", base[k], 2.0 + 0.01 * k, k + 1) for k in range(6)]
    out += [make_run(f"gelu-s{k + 1}", better[k], 1.8 + 0.01 * k, k + 1,
                     model__activation="gelu") for k in range(3)]
    out += [make_run(name, same[k], 2.0 + 0.01 * k, k + 1, model__dropout=0.2)
            for k, name in enumerate(["lusty-gaff", "brisk-oak", "tame-lid"])]
    out.append(make_run("swiglu", base[0], 2.0, 1, model__activation="swiglu"))
    return out


CATALOGUE = {"baseline": ({}, "The reference.", "bleu"),
             "gelu": ({"model.activation": "gelu"}, "GELU lowers the validation loss.",
                      "val_loss")}


def test_replicates_are_grouped_by_the_params_diff_without_the_seed(runs):
    [group] = compare.group_runs(runs, CATALOGUE)
    assert [r.name for r in group.baseline.runs] == [f"baseline-s{k}" for k in range(1, 7)]
    arms = {a.name: a for a in group.arms}
    assert set(arms) == {"gelu", "model.dropout=0.2", "swiglu"}
    assert len(arms["gelu"].runs) == 3 and arms["gelu"].metric == "val_loss"
    assert arms["gelu"].hypothesis == "GELU lowers the validation loss."
    assert len(arms["model.dropout=0.2"].runs) == 3  # a plain -S 'seed=range(1,4)' sweep
    assert arms["model.dropout=0.2"].metric == "bleu"  # not in the catalogue: BLEU


def test_pooled_verdicts_corrections_and_single_run_label(runs):
    [group] = compare.group_runs(runs, CATALOGUE)
    gelu = group.tests["gelu"]
    assert gelu["val_loss"].kind == "pooled" and gelu["val_loss"].verdict == "helps"
    assert gelu["val_loss"].agree == 3 and gelu["val_loss"].high < 0
    assert gelu["bleu"].kind == "pooled" and gelu["bleu"].verdict == "helps"
    assert gelu["bleu"].low > 0 and len(gelu["bleu"].seed_deltas) == 3
    sweep = group.tests["model.dropout=0.2"]["bleu"]
    assert sweep.verdict == "no significant difference"
    single = group.tests["swiglu"]
    assert single["bleu"].kind == "single run" and "test-set noise only" in single["bleu"].verdict
    assert single["val_loss"].verdict == "too few runs"
    # corrections over the three hypotheses with a p on their named metric
    assert set(group.corrected) == {"gelu", "model.dropout=0.2", "swiglu"}
    for name, corr in group.corrected.items():
        p = group.tests[name][next(a.metric for a in group.arms if a.name == name)].p_value
        assert corr["bh"] >= p and corr["holm"] >= corr["bh"]


def test_aa_check_splits_six_baseline_seeds_ten_ways(runs):
    [group] = compare.group_runs(runs, CATALOGUE)
    aa = group.aa
    assert aa["used"] == [1, 2, 3, 4, 5, 6]
    assert aa["bleu"][1] == 10 and aa["val_loss"][1] == 10
    assert aa["bleu"][0] >= 9  # same configuration: almost never "significant"
    assert aa["single_run"][1] == 15


def test_report_markdown_and_forest_plots(runs, tmp_path):
    groups = compare.group_runs(runs, CATALOGUE)
    figs = write_figures(groups, 80, tmp_path)
    md = markdown.render(groups, figs, 0, [])
    for png in ("forest_bleu.png", "forest_val_loss.png", "experiments_val_loss.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG
        assert f"]({png})" in md
    rows = table(md, "| hypothesis | params changed")
    assert rows["gelu"]["runs"] == "3" and rows["gelu"]["metric"] == "val_loss"
    assert rows["gelu"]["verdict"] == "helps" and rows["gelu"]["seeds agreeing"] == "3/3"
    assert rows["gelu"]["Holm"].startswith("helps (p ")
    assert re.fullmatch(r"-0\.\d{4} \[-0\.\d{4}, -0\.\d{4}\]", rows["gelu"]["Δ named metric [95% CI]"])
    assert rows["swiglu"]["verdict"].endswith("(test-set noise only)")
    assert "Clark et al. 2011" in md and "Koehn 2004" in md and "Efron & Tibshirani" in md
    assert re.search(r"\"no significant difference\" in \d+ of 10 splits", md)
    assert re.search(r"\"significant\" in \d+ of 15 pairs", md)
    assert "Baseline: 6 run(s) with no params change, seeds 1, 2, 3, 4, 5, 6" in md


def test_a_run_record_round_trips_and_stays_small(runs, tmp_path):
    rng = np.random.default_rng(0)
    run = runs[0]
    big = simulate(rng, 1, 1, 1000)[0, 0, 0]  # a 1000-sentence test set, and val as large
    run = experiments.Run(**{**run.__dict__, "sentences": {"test": big, "val": big},
                             "refs_sha256": {"test": "r", "val": "v"}})
    path = tmp_path / "baseline-s1.json"
    path.write_text(json.dumps(experiments.to_record(run), indent=1))
    assert path.stat().st_size < 50_000
    [back] = experiments.load_records(tmp_path)
    assert back.name == run.name and back.seed == 1 and back.diff == {"seed": 1}
    assert (back.sentences["test"] == big).all() and back.train == run.train
    assert compare.value(back, "bleu") == pytest.approx(compare.value(run, "bleu"))


def test_a_damaged_record_is_one_line_naming_it(tmp_path):
    (tmp_path / "x.json").write_text('{"format": 1, "name": "x"}')
    with pytest.raises(Exception) as e:
        experiments.load_records(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'x.json'}: not a run record")


def test_the_same_run_restored_twice_counts_once(runs):
    twin = experiments.Run(**{**runs[0].__dict__, "name": "commit-ccccccc", "rev": "c" * 40})
    [group] = compare.group_runs(runs + [twin], CATALOGUE)
    names = [r.name for r in group.baseline.runs]
    assert len(names) == 6 and "baseline-s1" in names


def test_params_diff_lists_changed_keys_dotted():
    base = {"seed": 1, "model": {"activation": "relu", "d_model": 256},
            "optim": {"betas": [0.9, 0.98]}}
    exp = {"seed": 1, "model": {"activation": "gelu", "d_model": 256},
           "optim": {"betas": [0.9, 0.95]}, "train": {"budget_minutes": 5.0}}
    diff = experiments.params_diff(base, exp)
    assert diff == {"model.activation": "gelu", "optim.betas": [0.9, 0.95],
                    "train.budget_minutes": 5.0}
    assert compare.format_diff(diff) == ("model.activation=gelu, optim.betas=[0.9, 0.95], "
                                         "train.budget_minutes=5.0")
    assert compare.format_diff({}) == "—"


def table(md: str, header_start: str) -> dict[str, dict[str, str]]:
    """A markdown table of the report as {first cell: {column: cell}}."""
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(header_start))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", ln.strip("|"))]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


# ---- end to end: tiny replicates queued and run with the real dvc --------------------------
TINY_CATALOGUE = """hypotheses:
  - {name: baseline, hypothesis: The reference., report: r, metric: bleu, set: {}}
  - {name: gelu, hypothesis: GELU lowers the validation loss., report: r, metric: val_loss,
     set: {model.activation: gelu}}
"""


def nmtlab(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return e2e.run([sys.executable, "-m", "nmtlab", *args], project, check=check)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Baseline committed; baseline and gelu queued with 2 seeds each, plus a plain seed
    sweep, and a gelu-s3 that fails; run; the report made (records written)."""
    project = e2e.make_project(tmp_path_factory.mktemp("report") / "proj", overrides={
        "train": {"epochs": 6, "batch_tokens": 300}})
    e2e.use_synthetic_corpus(project)
    (project / "hypotheses.yaml").write_text(TINY_CATALOGUE)
    e2e.dvc("repro", cwd=project)
    e2e.commit_all(project, "baseline run")
    queued = nmtlab(project, "hypotheses", "queue", "--seeds", "2").stdout
    assert queued.count("queued ") == 4, queued
    e2e.dvc("exp", "run", "--queue", "-S", "seed=range(1,3)", "-S", "model.dropout=0.1",
            cwd=project)
    # fails in train: the warm-up outlasts training
    e2e.dvc("exp", "run", "--queue", "-n", "gelu-s3", "-S", "model.activation=gelu", "-S",
            "seed=3", "-S", "schedule.warmup_steps=100000", cwd=project)
    nmtlab(project, "hypotheses", "start", "-j", "2", "--timeout", "900", check=False)
    nmtlab(project, "report")
    return project


@pytest.mark.e2e
def test_report_pools_queued_replicates_and_a_plain_sweep(project):
    md = (project / "reports/experiments.md").read_text()
    rows = table(md, "| hypothesis | params changed")
    assert set(rows) == {"gelu", "model.dropout=0.1"}
    assert rows["gelu"]["runs"] == "2" and rows["model.dropout=0.1"]["runs"] == "2"
    assert rows["gelu"]["verdict"] in {"helps", "hurts", "no significant difference"}
    # the baseline: seeds 1 and 2, and the commit's own run (seed 1234)
    assert "Baseline: 3 run(s) with no params change, seeds 1, 2, 1234" in md
    not_finished = table(md, "| experiment | state")
    assert not_finished["gelu-s3"]["state"] == "failed"
    runs = table(md, "| run | arm | seed")
    for name in ("baseline-s1", "baseline-s2", "gelu-s1", "gelu-s2"):
        bleu = json.loads(e2e.read_at(project, "data/bleu/metrics.json", name))
        assert runs[name]["test BLEU"] == f"{bleu['test']['bleu']:.2f}"
        record = json.loads((project / "reports/runs" / f"{name}.json").read_text())
        assert record["seed"] == int(name[-1]) and record["metrics"]["bleu"] == bleu
        assert (project / "reports/runs" / f"{name}.json").stat().st_size < 100_000
    for png in ("forest_bleu.png", "forest_val_loss.png"):
        assert (project / "reports" / png).read_bytes()[:8] == PNG


@pytest.mark.e2e
def test_rerunning_the_queue_queues_only_missing_or_failed_runs(project, tmp_path):
    again = nmtlab(project, "hypotheses", "queue", "--seeds", "3").stdout
    queued = re.findall(r"^queued ([^\s:]+)", again, re.M)
    assert sorted(queued) == ["baseline-s3", "gelu-s3"], again
    assert "queued gelu-s3 (again: it failed)" in again
    assert "4 skipped" in again
    e2e.dvc("queue", "remove", "--queued", cwd=project)


@pytest.mark.e2e
def test_a_fresh_clone_rebuilds_the_report_and_continues_from_the_records(project, tmp_path):
    e2e.commit_all(project, "run records")
    clone = tmp_path / "clone"
    e2e.run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / ".dvc" / "cache").exists()
    (clone / "reports/experiments.md").unlink()
    nmtlab(clone, "report", "--records-only")
    original = (project / "reports/experiments.md").read_text()
    rebuilt = (clone / "reports/experiments.md").read_text()
    for header in ("| hypothesis | params changed", "| hypothesis | ΔBLEU", "| run | arm"):
        assert table(rebuilt, header) == table(original, header)
    # the records count as done: nothing of the first two seeds is queued again
    again = nmtlab(clone, "hypotheses", "queue", "--seeds", "2").stdout
    assert "0 experiments queued, 4 skipped" in again, again
