"""The hypothesis report on synthetic run records (no training): arms matched to entries by
resolved params, paired by seed, identical trainings as "same training", provenance kept
apart, arm against arm, the markdown and forest plots, records that rebuild it; and end to
end, one tiny project swept in rounds with the real dvc and reported."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from nmtlab import sweeplog
from nmtlab.hypotheses import catalogue as cat
from nmtlab.report import compare, experiments, markdown, sequential
from nmtlab.report import significance as sig
from nmtlab.report.__main__ import write_figures

from . import e2e
from .test_significance import simulate

PNG = b"\x89PNG\r\n\x1a\n"
BASE = {"seed": 1234, "model": {"activation": "relu", "dropout": 0.1},
        "schedule": {"name": "inverse_sqrt", "gamma": 0.9}, "bleu": {}}
TRAIN = {"epochs": 3, "train_minutes": 2.0, "cpu_hours": 0.07, "stopped_by": "epochs",
         "device": "Some CPU (1 threads)", "bf16": False, "batch_tokens": 4096}


def epochs_tsv(val_loss: float, after_best: float = 0.0) -> str:
    """A 3-epoch log whose best epoch (2) has `val_loss`; `after_best` moves epoch 3 only."""
    rows = [(1, val_loss + 0.5), (2, val_loss), (3, val_loss + 0.1 + after_best)]
    return "epoch\ttrain_loss\tval_loss\n" + "".join(f"{e}\t{v + 1}\t{v}\n" for e, v in rows)


def make_run(name: str, stats: np.ndarray, val_loss: float, seed: int, *, train: dict = None,
             log: str | None = None, **changes) -> experiments.Run:
    params = json.loads(json.dumps(BASE))
    params["seed"] = seed
    for dotted, v in changes.items():
        group, key = dotted.split("__")
        params[group][key] = v
    return experiments.Run(
        name=name, rev=f"{abs(hash(name)):040x}"[:40], baseline_rev="c" * 40, params=params,
        base_params=BASE, train={**TRAIN, "best_val_loss": val_loss, **(train or {})},
        bleu={"test": {"bleu": round(float(sig.corpus_bleu(stats)), 2), "chrf": 50.0}},
        timestamp=f"2026-01-01T00:00:{seed:02d}", code="abc",
        epochs_tsv=log or epochs_tsv(val_loss), sentences={"test": stats, "val": stats[:50]},
        refs_sha256={"test": "r", "val": "v"}, outputs_sha256=name)


def entry(name: str, metric: str = "bleu", against: str = "baseline", **changes) -> cat.Hypothesis:
    return cat.Hypothesis(name, f"{name} helps.", "r", metric,
                          {k.replace("__", "."): v for k, v in changes.items()},
                          against=against if name != "baseline" else "",
                          min_effect={"bleu": 0.5, "val_loss": 0.01}[metric])


CATALOGUE = [entry("baseline"), entry("gelu", "val_loss", model__activation="gelu"),
             entry("decay", schedule__name="exponential", schedule__gamma=0.9),
             entry("swiglu", model__activation="swiglu"), entry("never-run", model__dropout=0.3)]


@pytest.fixture(scope="module")
def sim() -> np.ndarray:
    """(2 arms, 6 runs, 400 sentences, 6) simulated statistics of one test set."""
    return simulate(np.random.default_rng(5), 1, 6, 400)[0]


def better(stats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A third of the missed n-grams found: a system far better than `stats`."""
    out = stats.copy()
    totals = np.clip(out[..., :1] - np.arange(1, 5) + 1, 0, None)
    out[..., 2:] += rng.binomial(totals - out[..., 2:], 0.33)
    return out


@pytest.fixture(scope="module")
def runs(sim) -> list[experiments.Run]:
    """6 baseline seeds; gelu (3 seeds, named anyhow) far better; exponential decay (3 seeds)
    that sets only the schedule's name (its gamma is the default); a plain dropout sweep
    named like gelu's replicates; one single run of swiglu; a plain beam-size run."""
    base, same = sim[0], sim[1]
    good = better(same[:3], np.random.default_rng(6))
    out = [make_run(f"baseline-s{k + 1}", base[k], 2.0 + 0.01 * k, k + 1) for k in range(6)]
    out += [make_run(n, good[k], 1.8 + 0.01 * k, k + 1, model__activation="gelu")
            for k, n in enumerate(["lusty-gaff", "brisk-oak", "tame-lid"])]
    out += [make_run(f"zzz-s{k + 1}", same[k], 2.0 + 0.02 * k, k + 1,
                     schedule__name="exponential") for k in range(3)]
    out += [make_run(f"gelu-s{k + 1}", same[3 + k], 2.0 + 0.01 * k, k + 1, model__dropout=0.2)
            for k in range(3)]
    out.append(make_run("swiglu", base[0], 2.0, 1, model__activation="swiglu"))
    out.append(make_run("beam1", base[1], 2.0, 1, model__dropout=0.0))
    return out


def test_arms_are_matched_to_entries_by_resolved_params_never_by_name(runs):
    [group] = compare.group_runs(runs, CATALOGUE)
    arms = {a.name: a for a in group.arms}
    assert set(arms) == {"gelu", "decay", "swiglu", "model.dropout=0.2", "beam1"}
    assert [r.name for r in arms["gelu"].runs] == ["lusty-gaff", "brisk-oak", "tame-lid"]
    assert arms["gelu"].metric == "val_loss" and arms["gelu"].hypothesis == "gelu helps."
    # decay names gamma 0.9, the default: its runs' diff is only the schedule's name
    assert arms["decay"].diff == {"schedule.name": "exponential"}
    assert arms["decay"].entry.name == "decay"
    # named gelu-sK, but another configuration: a plain sweep, its metric BLEU, named by its
    # params (a plain run whose name no entry has keeps it: beam1)
    assert arms["model.dropout=0.2"].entry is None and arms["model.dropout=0.2"].metric == "bleu"
    assert arms["beam1"].entry is None and arms["beam1"].diff == {"model.dropout": 0.0}
    assert group.missing == ["never-run"]


def test_arms_are_compared_seed_by_seed(runs):
    [group] = compare.group_runs(runs, CATALOGUE)
    gelu = group.named["gelu"]
    assert gelu.kind == "paired" and gelu.seeds == 3 and gelu.reference == "baseline"
    # seed k against baseline seed k: -0.2 each, not against the mean of 6 seeds (2.025)
    assert gelu.seed_deltas == pytest.approx([-0.2] * 3)
    assert gelu.delta == pytest.approx(-0.2) and gelu.verdict == "helps"
    bleu = dict(group.both)["gelu"]["bleu"]
    assert bleu.verdict == "helps" and bleu.low > 0 and bleu.agree == 3
    single = dict(group.both)["swiglu"]["bleu"]
    assert single.kind == "single run" and single.verdict.endswith("(test-set noise only)")
    assert dict(group.both)["swiglu"]["val_loss"].verdict == "too few runs"
    assert set(group.corrected) == {"gelu", "decay", "swiglu", "model.dropout=0.2", "beam1"}
    for name, corr in group.corrected.items():
        assert corr["bh"] >= group.named[name].sequential_p and corr["holm"] >= corr["bh"]


def test_paired_identical_trainings_give_delta_zero_and_no_verdict(sim):
    """An arm that changes only what happens after training (the run cache restores the
    baseline's training of the same seed): Δ val loss exactly 0 in every seed is "same
    training", and "same best epoch" when only epochs after the best one differ."""
    base = [make_run(f"baseline-s{k}", sim[0, k], 2.0 + 0.01 * k, k) for k in (1, 2, 3)]
    swa = [make_run(f"swa-s{k}", sim[1, k], 2.0 + 0.01 * k, k, model__dropout=0.2)
           for k in (1, 2, 3)]
    late = [make_run(f"late-s{k}", sim[1, k], 2.0 + 0.01 * k, k, model__activation="gelu",
                     log=epochs_tsv(2.0 + 0.01 * k, after_best=0.05)) for k in (1, 2, 3)]
    catalogue = [entry("baseline"), entry("swa", "val_loss", model__dropout=0.2),
                 entry("late", "val_loss", model__activation="gelu")]
    [group] = compare.group_runs(base + swa + late, catalogue)
    same, after = group.named["swa"], group.named["late"]
    assert same.delta == 0.0 and same.seed_deltas == [0.0, 0.0, 0.0]
    assert same.verdict == "same training as baseline" and same.kind == compare.SAME
    assert np.isnan(same.p_value) and "swa" not in group.corrected  # not a test, no correction
    assert after.verdict == "same best epoch as baseline (the change acts after it)"
    md = markdown.render([group], [{}], 0, [])
    assert "| swa | baseline | model.dropout=0.2 | val_loss | 3 |" in md
    assert "same training as baseline" in table(md, "| hypothesis | against")["swa"]["verdict"]


def test_runs_of_different_provenance_are_kept_apart(sim):
    """A run on another device, or stopped by its time budget, is never pooled with the
    others nor paired with them; an early stop by patience does not split."""
    base = [make_run(f"baseline-s{k}", sim[0, k], 2.0, k) for k in (1, 2, 3)]
    gelu = [make_run(f"gelu-s{k}", sim[1, k], 1.9, k, model__activation="gelu",
                     train={"stopped_by": "early_stopping"}) for k in (1, 2)]
    gelu.append(make_run("gelu-s3", sim[1, 3], 1.9, 3, model__activation="gelu",
                         train={"stopped_by": "budget"}))
    gpu = make_run("baseline-s4", sim[0, 4], 2.0, 4, train={"device": "NVIDIA H100",
                                                             "bf16": True})
    groups = compare.group_runs(base + gelu + [gpu], CATALOGUE)
    sizes = sorted((sum(len(a.runs) for a in g.all_arms), g.provenance["device"],
                    g.provenance["budget_stop"]) for g in groups)
    assert sizes == [(1, "NVIDIA H100", False), (1, "Some CPU", True), (5, "Some CPU", False)]
    main = next(g for g in groups if len(g.all_arms) == 2)
    assert main.named["gelu"].seeds == 2  # seeds 1 and 2; seed 3 ended by the budget
    line = markdown.provenance_line(groups)
    assert line.startswith("Kept apart (never pooled or paired), differing in device, dtype, "
                           "budget stop: ")
    assert "device NVIDIA H100, dtype bf16, no budget stop" in line
    assert "device Some CPU, dtype fp32, stopped by the time budget" in line
    assert markdown.provenance_line(groups[:1]).startswith("All runs share one provenance: ")


def test_provenance_of_old_records_and_of_new_metrics():
    old = experiments.provenance({"device": "Intel(R) Xeon(R) Processor (2 threads)",
                                  "bf16": True, "batch_tokens": 4096, "stopped_by": "epochs"},
                                 "f2c6f4dfef02")
    assert old == {"device": "Intel(R) Xeon(R) Processor", "dtype": "bf16",
                   "torch": "not recorded", "code": "f2c6f4dfef02", "batch_tokens": 4096,
                   "budget_stop": False}
    new = experiments.provenance({"device": "cpu (1 threads)", "bf16": False, "torch": "2.13.0",
                                  "code": "9a8b", "batch_tokens": 5120, "stopped_by": "budget"},
                                 "f2c6f4dfef02")
    assert (new["torch"], new["code"], new["dtype"], new["budget_stop"]) == (
        "2.13.0", "9a8b", "fp32", True)


def test_the_same_run_twice_counts_once_but_equal_outputs_do_not_merge(runs):
    twin = experiments.Run(**{**runs[0].__dict__, "name": "commit-ccccccc", "rev": "c" * 40})
    # the same translations as lusty-gaff (outputs_sha256), but seed 99: another run
    copycat = experiments.Run(**{**runs[6].__dict__, "name": "copy",
                                 "params": {**runs[6].params, "seed": 99}})
    assert copycat.outputs_sha256 == runs[6].outputs_sha256
    [group] = compare.group_runs(runs + [twin, copycat], CATALOGUE)
    names = [r.name for r in group.baseline.runs]
    assert len(names) == 6 and "baseline-s1" in names
    gelu = next(a for a in group.arms if a.name == "gelu")
    assert [r.name for r in gelu.runs] == ["lusty-gaff", "brisk-oak", "tame-lid", "copy"]


def test_an_arm_against_another_arm(sim):
    base = [make_run(f"baseline-s{k}", sim[0, k], 2.0 + 0.01 * k, k) for k in (1, 2, 3)]
    x4 = [make_run(f"x4-s{k}", sim[0, k + 2], 2.1 + 0.01 * k, k, model__dropout=0.2)
          for k in (1, 2, 3)]
    x8 = [make_run(f"x8-s{k}", sim[1, k], 2.05 + 0.01 * k, k, model__dropout=0.3)
          for k in (1, 2, 3)]
    catalogue = [entry("baseline"), entry("x4", "val_loss", model__dropout=0.2),
                 entry("x8", "val_loss", against="x4", model__dropout=0.3)]
    [group] = compare.group_runs(base + x4 + x8, catalogue)
    c = group.named["x8"]
    assert c.reference == "x4" and c.delta == pytest.approx(-0.05) and c.verdict == "helps"
    labels = [label for label, _ in group.both]
    assert labels == ["x4", "x8", "x8 vs x4"]
    md = markdown.render([group], [{}], 0, [])
    assert table(md, "| hypothesis | against")["x8"]["against"] == "x4"
    assert "x8 vs x4" in table(md, "| hypothesis | ΔBLEU")


def test_a_sweep_in_rounds_is_judged_by_its_boundaries(sim):
    """Swept in rounds: a decision at 2 seeds needs p below the first look's alpha; the
    interval is at that look's level; a clear effect at 2 seeds is decided there."""
    base = [make_run(f"baseline-s{k}", sim[0, k], 2.0 + 0.013 * k ** 2, k) for k in (1, 2)]
    gelu = [make_run(f"gelu-s{k}", sim[1, k], 1.5 + 0.013 * k ** 2 + 0.001 * k, k,
                     model__activation="gelu") for k in (1, 2)]
    [fixed] = compare.group_runs(base + gelu, CATALOGUE)
    [rounds] = compare.group_runs(base + gelu, CATALOGUE, sequential_codes={"abc"})
    assert fixed.design == "fixed" and rounds.design == "sequential"
    f, r = fixed.named["gelu"], rounds.named["gelu"]
    assert f.level == pytest.approx(0.95)
    assert r.level == pytest.approx(1 - sequential.SEQUENTIAL.alphas[0])
    assert r.sequential_p == pytest.approx(min(1.0, r.p_value * 0.05 / 0.005))
    assert f.verdict == r.verdict == "helps" and r.seeds == 2


def test_report_markdown_and_forest_plots(runs, tmp_path):
    groups = compare.group_runs(runs, CATALOGUE)
    figs = write_figures(groups, 80, tmp_path)
    md = markdown.render(groups, figs, 0, [])
    for png in ("forest_bleu.png", "forest_val_loss.png", "experiments_val_loss.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG
        assert f"]({png})" in md
    rows = table(md, "| hypothesis | against")
    assert rows["gelu"]["runs"] == "3" and rows["gelu"]["metric"] == "val_loss"
    assert rows["gelu"]["verdict"] == "helps" and rows["gelu"]["seeds agreeing"] == "3/3"
    assert rows["gelu"]["δ"] == "0.01" and rows["gelu"]["power at δ"].endswith("%")
    assert re.fullmatch(r"-0\.\d{4} \[-0\.\d{4}, -0\.\d{4}\]",
                        rows["gelu"]["Δ named metric [95% CI]"])
    assert rows["swiglu"]["verdict"].endswith("(test-set noise only)")
    assert "No runs yet on this code version and provenance: never-run" in md
    assert "Not calibrated on this baseline" in md
    assert re.search(r"\"significant\" in \d+ of 15 pairs", md)
    assert "Baseline: 6 run(s) with no params change, seeds 1, 2, 3, 4, 5, 6" in md


def test_a_run_record_round_trips_with_its_provenance_and_stays_small(runs, tmp_path):
    big = simulate(np.random.default_rng(0), 1, 1, 1000)[0, 0, 0]
    run = experiments.Run(**{**runs[0].__dict__, "sentences": {"test": big, "val": big}})
    record = experiments.to_record(run)
    assert record["format"] == 2 and set(record["provenance"]) == set(experiments.PROVENANCE)
    path = experiments.record_path(run, tmp_path)
    assert path == tmp_path / "abc" / "baseline-s1.json"
    path.parent.mkdir()
    path.write_text(json.dumps(record, indent=1))
    assert path.stat().st_size < 50_000
    old = {k: v for k, v in record.items() if k != "provenance"} | {"format": 1, "name": "old"}
    (tmp_path / "old.json").write_text(json.dumps(old))  # the first sweep's flat layout
    back, first = sorted(experiments.load_records(tmp_path), key=lambda r: r.name != "baseline-s1")
    assert back.seed == 1 and back.diff == {"seed": 1} and (back.sentences["test"] == big).all()
    assert back.provenance == first.provenance == run.provenance


def test_a_damaged_record_is_one_line_naming_it(tmp_path):
    (tmp_path / "x.json").write_text('{"format": 2, "name": "x"}')
    with pytest.raises(Exception) as e:
        experiments.load_records(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'x.json'}: not a run record")


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


# ---- end to end: a tiny catalogue swept in rounds with the real dvc, and reported -----------
TINY_CATALOGUE = """hypotheses:
  - {name: baseline, hypothesis: The reference., report: r, metric: bleu, set: {}}
  - {name: gelu, hypothesis: GELU lowers the validation loss., report: r, metric: val_loss,
     set: {model.activation: gelu}}
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A tiny project with a two-entry catalogue, swept in rounds (one look at 2 seeds here,
    so that one round decides) in this process, with the real dvc queue; then reported."""
    mp = pytest.MonkeyPatch()
    project = e2e.make_project(tmp_path_factory.mktemp("report") / "proj", n_train=120,
                               n_eval=40, overrides={"train": {"epochs": 4, "batch_tokens": 300}})
    e2e.use_synthetic_corpus(project, n_train=120, n_eval=40)
    (project / "hypotheses.yaml").write_text(TINY_CATALOGUE)
    e2e.dvc("repro", cwd=project)
    e2e.commit_all(project, "baseline run")
    for key, val in e2e.env().items():
        mp.setenv(key, val)
    mp.setattr(sequential, "SEQUENTIAL", sequential.Design((2,), (0.05,)))
    from nmtlab.hypotheses import sweep

    catalogue = cat.load(project / "hypotheses.yaml", project / "params.yaml")
    sweep.sweep(catalogue, [], jobs=2, repo=project, poll=2.0)
    mp.undo()
    e2e.run([sys.executable, "-m", "nmtlab", "report"], project)
    return project, catalogue


@pytest.mark.e2e
def test_a_sweep_in_rounds_records_its_runs_and_reports_them(swept):
    project, _ = swept
    code = experiments.code_hash("HEAD", str(project))
    recorded = sorted(p.stem for p in (project / "reports/runs" / code).glob("*.json"))
    # the four runs of the round, and the committed baseline run (seed 1234) of `dvc repro`
    assert recorded[:2] == ["baseline-s1", "baseline-s2"] and recorded[3:] == [
        "gelu-s1", "gelu-s2"] and recorded[2].startswith("commit-")
    assert sweeplog.sequential_codes(project / sweeplog.ROUNDS) == {code}
    md = (project / "reports/experiments.md").read_text()
    assert "Swept in rounds (reports/sweep_rounds.tsv)" in md
    rows = table(md, "| hypothesis | against")
    assert rows["gelu"]["runs"] == "2" and rows["gelu"]["against"] == "baseline"
    for name in ("baseline-s1", "gelu-s2"):
        bleu = json.loads(e2e.read_at(project, "data/bleu/metrics.json", name))
        assert table(md, "| run | arm | seed")[name]["test BLEU"] == f"{bleu['test']['bleu']:.2f}"
    for png in ("forest_bleu.png", "forest_val_loss.png"):
        assert (project / "reports" / png).read_bytes()[:8] == PNG


@pytest.mark.e2e
def test_rerunning_the_sweep_queues_nothing_that_is_done(swept, monkeypatch, capsys):
    project, catalogue = swept
    from nmtlab.hypotheses import sweep

    for key, val in e2e.env().items():
        monkeypatch.setenv(key, val)
    monkeypatch.setattr(sequential, "SEQUENTIAL", sequential.Design((2,), (0.05,)))
    monkeypatch.setattr(sweep, "run_queue", lambda *a, **k: pytest.fail("ran the queue again"))
    sweep.sweep(catalogue, [], jobs=2, repo=project)
    assert "gelu: " in capsys.readouterr().out


@pytest.mark.e2e
def test_a_fresh_clone_rebuilds_the_report_from_the_records(swept, tmp_path):
    project, _ = swept
    e2e.commit_all(project, "run records")
    clone = tmp_path / "clone"
    e2e.run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    (clone / "reports/experiments.md").unlink()
    e2e.run([sys.executable, "-m", "nmtlab", "report", "--records-only"], clone)
    original = (project / "reports/experiments.md").read_text()
    rebuilt = (clone / "reports/experiments.md").read_text()
    for header in ("| hypothesis | against", "| hypothesis | ΔBLEU", "| run | arm"):
        assert table(rebuilt, header) == table(original, header)
