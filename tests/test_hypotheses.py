"""The hypotheses catalogue: each entry valid against the default params, its `-S` overrides
applied by DVC's own Hydra machinery changing exactly the keys it names, refusals of bad
entries, the queue driver on DVC's JSON; and (e2e) one entry with its references queued and
run as real experiments on the tiny project."""
from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides
from hydra.core.override_parser.overrides_parser import OverridesParser

from nmt.errors import UserError
from nmt.params import from_dict
from nmt.schedules import check as check_schedule
from nmtlab.hypotheses import catalogue as cat
from nmtlab.hypotheses import queue

from . import e2e

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = REPO / "hypotheses.yaml"
PARAMS = REPO / "params.yaml"
# The default run's batches per epoch: 2,900 pairs (subsample.fraction 0.1 of Multi30k) cut
# by train.batch_tokens 4096, as `stages.train` logs it. Update with those defaults.
DEFAULT_BATCHES_PER_EPOCH = 25
REPORT_NAMES = ["nhead-x2", "ffn-x2", "emb-x2", "enc-layers-x2", "dec-layers-x2", "accum-x4",
                "accum-x8", "accum-x4-sqrt-lr", "accum-x8-sqrt-lr", "gelu", "swa-last-25pct",
                "exp-decay-0.9", "label-smoothing-0.1", "triangular-lr", "plateau-guard",
                "best-epoch", "ensemble-last-5", "sgd-after-adam", "label-smoothing-triangular",
                "label-smoothing-triangular-stop", "final-combination"]
PROJECT_NAMES = ["stock-kernels"]  # checks of this project's own code, after the report's


@pytest.fixture(scope="module")
def catalogue() -> list[cat.Hypothesis]:
    return cat.load(CATALOGUE, PARAMS)


def write_catalogue(tmp_path: Path, entries: list[dict]) -> Path:
    path = tmp_path / "hypotheses.yaml"
    path.write_text(yaml.safe_dump({"hypotheses": [entry("baseline")] + entries}))
    return path


def entry(name: str = "x", **changes) -> dict:
    return {"name": name, "hypothesis": "It helps.", "report": "It helped.", "metric": "bleu",
            "set": changes}


# ---- the catalogue -------------------------------------------------------------------------
def test_catalogue_names_every_report_hypothesis_and_a_baseline(catalogue):
    names = [h.name for h in catalogue]
    assert names == ["baseline", *REPORT_NAMES, *PROJECT_NAMES]
    assert catalogue[0].set == {} and catalogue[0].against == ""


def test_every_entrys_overrides_change_exactly_their_keys_through_dvc(catalogue, tmp_path):
    """What `dvc exp run -S` does to params.yaml (dvc.utils.hydra.apply_overrides, Hydra's
    grammar): each entry's values arrive with their types, and no other key moves. No
    training needed to know every entry runs what it says."""
    raw = yaml.safe_load(PARAMS.read_text())
    for h in catalogue:
        path = tmp_path / f"{h.name}.yaml"
        path.write_text(PARAMS.read_text())
        apply_overrides(path, h.overrides())
        after = yaml.safe_load(path.read_text())
        assert after == cat.apply(raw, h.set), h.name
        for key, value in h.set.items():
            override = f"{key}={cat.hydra_value(value)}"
            (parsed,) = OverridesParser.create().parse_overrides([override])
            assert parsed.value() == value and type(parsed.value()) is type(value), (h.name, key)


def test_every_entry_validates_against_the_default_params(catalogue):
    raw = yaml.safe_load(PARAMS.read_text())
    for h in catalogue:
        from_dict(cat.apply(raw, h.set)).validate()  # raises UserError naming the key


def test_every_warm_up_ends_before_the_default_run_does(catalogue):
    """train refuses a warm-up longer than training; the schema alone cannot see it."""
    raw = yaml.safe_load(PARAMS.read_text())
    for h in catalogue:
        p = from_dict(cat.apply(raw, h.set))
        steps = math.ceil(DEFAULT_BATCHES_PER_EPOCH / p.train.accum_steps) * p.train.epochs
        check_schedule(p.schedule, steps)


def test_entries_are_faithful_to_the_report(catalogue):
    raw = yaml.safe_load(PARAMS.read_text())
    by_name = {h.name: from_dict(cat.apply(raw, h.set)) for h in catalogue}
    entries = {h.name: h for h in catalogue}
    base = by_name["baseline"]
    assert by_name["nhead-x2"].model.nhead == 2 * base.model.nhead
    assert by_name["ffn-x2"].model.dim_feedforward == 2 * base.model.dim_feedforward
    assert by_name["emb-x2"].model.d_model == 2 * base.model.d_model
    assert by_name["enc-layers-x2"].model.num_encoder_layers == 2 * base.model.num_encoder_layers
    assert by_name["dec-layers-x2"].model.num_decoder_layers == 2 * base.model.num_decoder_layers
    for k in (4, 8):
        plain, scaled = by_name[f"accum-x{k}"], by_name[f"accum-x{k}-sqrt-lr"]
        assert plain.train.accum_steps == scaled.train.accum_steps == k
        # the warm-up spans the same 200 batches; the scaled peak is lr * sqrt(k)
        assert plain.schedule.warmup_steps * k == base.schedule.warmup_steps
        assert scaled.schedule.warmup_steps == plain.schedule.warmup_steps
        assert plain.optim.lr == base.optim.lr
        assert scaled.optim.lr == pytest.approx(base.optim.lr * math.sqrt(k), rel=2e-3)
    assert entries["accum-x8"].against == "accum-x4"
    assert entries["accum-x8-sqrt-lr"].against == "accum-x4-sqrt-lr"
    assert by_name["gelu"].model.activation == "gelu"
    swa = by_name["swa-last-25pct"]
    assert swa.swa.last_fraction == 0.25
    assert math.ceil(0.25 * swa.train.epochs) <= swa.train.keep_checkpoints
    exp = by_name["exp-decay-0.9"].schedule
    assert (exp.name, exp.gamma) == ("exponential", 0.9)
    assert by_name["label-smoothing-0.1"].loss.label_smoothing == 0.1
    assert by_name["triangular-lr"].schedule.name == "triangular"
    assert by_name["plateau-guard"].schedule.plateau_patience == 3
    sgd = by_name["sgd-after-adam"]
    assert sgd.optim.sgd_from_epoch == 3 * sgd.train.epochs // 4 + 1  # SGD for the last quarter
    ls_tri, stop = by_name["label-smoothing-triangular"], by_name["label-smoothing-triangular-stop"]
    assert (ls_tri.loss.label_smoothing, ls_tri.schedule.name) == (0.1, "triangular")
    assert stop.swa.best_by == "val_loss"  # the best epoch's weights: a stop by hand there
    # the same training (DVC's run cache restores it), only the weights kept differ
    assert {k: v for k, v in entries["label-smoothing-triangular-stop"].set.items()
            if not k.startswith("swa.")} == entries["label-smoothing-triangular"].set
    assert entries["label-smoothing-triangular-stop"].against == "label-smoothing-triangular"
    final = by_name["final-combination"]
    assert final.loss.label_smoothing == 0.1 and final.train.accum_steps == 4
    assert final.schedule.name == "triangular" and final.train.epochs == 15
    assert final.schedule.plateau_patience == 3
    assert entries["final-combination"].against == "swa-last-25pct"
    assert entries["stock-kernels"].claim == "equivalent"


def test_the_real_catalogue_lists_and_renders_commands():
    proc = subprocess.run([sys.executable, "-m", "nmtlab.hypotheses", "commands"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "dvc exp run -n baseline"
    assert "dvc exp run -n gelu -S model.activation=gelu" in lines
    assert "dvc exp run -n accum-x4 -S train.accum_steps=4 -S schedule.warmup_steps=50" in lines
    assert len(lines) == 1 + len(REPORT_NAMES) + len(PROJECT_NAMES)


def test_metric_and_min_effect_follow_the_hypothesis(catalogue):
    for h in catalogue:
        if "lowers the validation loss" in h.hypothesis:
            assert h.metric == "val_loss", h.name
        elif "BLEU" in h.hypothesis or "translates better" in h.hypothesis:
            assert h.metric == "bleu", h.name
        assert h.min_effect == {"bleu": 0.5, "val_loss": 0.01}[h.metric] or h.claim == \
            "equivalent", h.name


# ---- rendering -----------------------------------------------------------------------------
@pytest.mark.parametrize("value, text", [
    (8, "8"), (0.1, "0.1"), (1e-4, "0.0001"), (1e-05, "1e-05"), (-0.5, "-0.5"), (2.0, "2.0"),
    (True, "true"), (False, "false"), (None, "null"), ("gelu", "gelu"),
    ([0.9, 0.98], "[0.9,0.98]"), ("true", "'true'"), ("1.0", "'1.0'"), ("", "''"),
    ("a b", "'a b'"), ("it's", "'it\\'s'"), ("corpus/train.de", "corpus/train.de"),
])
def test_values_render_as_hydra_reads_them_back(value, text):
    assert cat.hydra_value(value) == text
    (parsed,) = OverridesParser.create().parse_overrides([f"optim.x={text}"])
    assert parsed.key_or_group == "optim.x"
    assert parsed.value() == value and type(parsed.value()) is type(value)


def test_command_lines(catalogue):
    h = cat.Hypothesis("betas", "h", "r", "bleu", {"optim.betas": [0.9, 0.99], "train.amp": "fp32"})
    assert h.command() == ["dvc", "exp", "run", "-n", "betas", "-S", "optim.betas=[0.9,0.99]",
                           "-S", "train.amp=fp32"]
    assert h.command(queue=True, force=True)[:6] == [
        "dvc", "exp", "run", "--queue", "--force", "-n"]
    table = cat.table(catalogue, markdown=True)
    assert "| gelu | " in table and "`dvc exp run -n gelu -S model.activation=gelu`" in table
    assert "| accum-x8 | " in table and "| accum-x4 | `dvc exp run -n accum-x8" in table
    assert "-S 'optim.betas=[0.9,0.99]'" in shlex.join(h.command())


# ---- bad catalogues ------------------------------------------------------------------------
@pytest.mark.parametrize("entries, message", [
    ([entry("wide", **{"model.widht": 2})],
     "entry 'wide': unknown params key 'model.widht' in "),
    ([entry("heads", **{"model.nhaed": 8})], "(did you mean 'model.nhead'?)"),
    ([entry("deeper", **{"model.nhead.x": 6})], "('model.nhead' has no 'x')"),
    ([entry("act", **{"model.activation": "tanh"})],
     "entry 'act': model.activation: unknown value 'tanh'"),
    ([entry("warm", **{"optim.lr": 0})], "entry 'warm': optim.lr: must be positive"),
    ([entry("swa", **{"swa.last_fraction": 0.5})], "entry 'swa': swa.last_fraction: 0.5 of 20"),
    ([entry("grp", **{"model": {"nhead": 8}})], "entry 'grp': model: values must be"),
    ([entry("Bad Name")], "name must be lower-case"),
    ([entry("twice", **{"model.nhead": 8}), entry("twice", **{"model.nhead": 2})],
     "entry 'twice': the name is used twice"),
    ([{**entry("x"), "metric": "BLEU"}], "entry 'x': 'metric' must name what the hypothesis "
     "improves, one of bleu, val_loss; got 'BLEU'"),
    ([entry("lucky", seed=7)], "entry 'lucky': set: 'seed' is the training seed"),
    ([{"name": "x", "hypothesis": "h", "report": "r", "set": {}, "sett": {}}],
     "entry 'x': unknown field 'sett'"),
    ([{"name": "x", "set": {}, "report": "r"}], "entry 'x': 'hypothesis' must be a sentence"),
    # matched by resolved params, so an entry equal to the defaults would be the baseline
    ([entry("decay", **{"schedule.gamma": 0.9})], "entry 'decay': every value in 'set' equals "
     "the default in "),
    ([entry("a", **{"model.nhead": 8}), entry("b", **{"model.nhead": 8, "schedule.gamma": 0.9})],
     "entry 'b': sets the same params as entry 'a'"),
    ([{**entry("x", **{"model.nhead": 8}), "against": "nothing"}],
     "entry 'x': 'against' names no entry: 'nothing'"),
    ([{**entry("x", **{"model.nhead": 8}), "against": "x"}], "entry 'x': 'against' must name "
     "another entry"),
    ([{**entry("a", **{"model.nhead": 8}), "against": "b"},
      {**entry("b", **{"model.nhead": 2}), "against": "a"}], "goes round in a circle"),
    ([{**entry("x", **{"model.nhead": 8}), "min_effect": -1}], "'min_effect' must be a positive"),
    ([{**entry("x", **{"model.nhead": 8}), "claim": "worse"}], "'claim' must be one of"),
])
def test_bad_catalogue_entries_fail_with_one_line_naming_entry_and_key(tmp_path, entries, message):
    path = write_catalogue(tmp_path, entries)
    with pytest.raises(UserError) as e:
        cat.load(path, PARAMS)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_an_entry_setting_a_default_among_its_changes_is_fine(tmp_path):
    """exp-decay-0.9 names gamma 0.9, the default, beside the schedule it changes."""
    path = write_catalogue(tmp_path, [entry("decay", **{"schedule.name": "exponential",
                                                        "schedule.gamma": 0.9})])
    [_, decay] = cat.load(path, PARAMS)
    raw = yaml.safe_load(PARAMS.read_text())
    config = cat.resolved(raw, decay.set)
    assert config["schedule.name"] == "exponential" and "seed" not in config


def test_replicates_are_named_after_entry_and_seed(catalogue):
    chosen = cat.select(catalogue, ["baseline", "gelu"])
    planned = queue.plan(chosen, seeds=3, baseline_seeds=6)
    names = [cat.replicate_name(h.name, k) for h, k in planned]
    assert names == [f"baseline-s{k}" for k in range(1, 7)] + ["gelu-s1", "gelu-s2", "gelu-s3"]
    gelu = planned[-1][0]
    assert gelu.command(seed=3) == ["dvc", "exp", "run", "-n", "gelu-s3", "-S",
                                    "model.activation=gelu", "-S", "seed=3"]
    assert queue.plan(chosen) == [(chosen[0], None), (chosen[1], None)]


def test_one_entry_with_seeds_brings_what_it_is_compared_with(catalogue):
    """`make queue-hypotheses SEEDS=3 NAMES=accum-x8` queues accum-x4 (its `against`) and
    the baseline (accum-x4's) too: a paired verdict has nothing to pair with otherwise."""
    names = [h.name for h in queue.to_queue(catalogue, ["accum-x8"], seeds=True)]
    assert names == ["baseline", "accum-x4", "accum-x8"]
    assert [h.name for h in queue.to_queue(catalogue, ["gelu"], seeds=False)] == ["gelu"]
    assert [h.name for h in queue.to_queue(catalogue, ["gelu", "baseline"], True)] == [
        "gelu", "baseline"]
    assert len(queue.to_queue(catalogue, [], True)) == len(catalogue)


def test_unknown_name_is_refused(catalogue):
    with pytest.raises(UserError, match="no entry named 'gelo'"):
        cat.select(catalogue, ["gelo"])


# ---- the queue driver on DVC's JSON ----------------------------------------------------------
def exp(name: str, state: str, task: str, rev: str = "e" * 40) -> dict:
    return {"name": name, "executor": {"state": state, "local": {"task_id": task}},
            "revs": [{"rev": rev, "name": name}]}


def test_states_come_from_exp_show_json_per_code_version(monkeypatch):
    shown = [{"rev": "workspace"},
             {"rev": "old" * 13 + "o", "experiments": [exp("gelu-s1", "success", "t1"),
                                                       exp("gelu-s2", "queued", "t2")]},
             {"rev": "new" * 13 + "n", "experiments": [exp("gelu-s1", "failed", "t3"),
                                                       exp("baseline-s1", "running", "t4")]}]
    from nmtlab.report import experiments
    monkeypatch.setattr(experiments, "code_hash", lambda rev, repo=".": rev[:3])
    # finished runs of old code do not count; open tasks count whatever their commit
    assert queue.experiment_states(shown, "new") == {
        "gelu-s1": "failed", "gelu-s2": "queued", "baseline-s1": "running"}
    assert queue.experiment_states(shown, "old") == {
        "gelu-s1": "success", "gelu-s2": "queued", "baseline-s1": "running"}
    assert {e["task"]: e["state"] for e in queue.experiments(shown)} == {
        "t1": "success", "t2": "queued", "t3": "failed", "t4": "running"}


def test_queue_runs_skips_what_is_done_or_open_and_requeues_failures(catalogue, monkeypatch):
    calls = []
    monkeypatch.setattr(queue.dvcrun, "run", lambda args, repo: calls.append(args) or
                        subprocess.CompletedProcess(args, 0, "", ""))
    gelu = next(h for h in catalogue if h.name == "gelu")
    states = {"gelu-s1": "recorded", "gelu-s2": "success", "gelu-s3": "running",
              "gelu-s4": "queued", "gelu-s5": "failed"}
    queued, skipped = queue.queue_runs([(gelu, k) for k in range(1, 7)], states)
    assert (queued, skipped) == (2, 4)
    assert calls == [["exp", "run", "--queue", "--force", "-n", "gelu-s5", "-S",
                      "model.activation=gelu", "-S", "seed=5"],
                     ["exp", "run", "--queue", "-n", "gelu-s6", "-S", "model.activation=gelu",
                      "-S", "seed=6"]]


def test_run_queue_names_failures_and_notices_a_queue_nobody_runs(monkeypatch, tmp_path):
    answers = iter([{"a": ("x-s1", "queued"), "b": ("x-s2", "queued")},
                    {"a": ("x-s1", "running"), "b": ("x-s2", "queued")},
                    {"a": ("x-s1", "success"), "b": ("x-s2", "failed")}])
    monkeypatch.setattr(queue, "_tasks", lambda repo: next(answers))
    with pytest.raises(UserError, match=r"queue: 1 of 2 experiments failed \(x-s2\)"):
        queue.run_queue(poll=0.0, repo=tmp_path)
    monkeypatch.setattr(queue, "_tasks", lambda repo: {"a": ("x-s1", "queued")})
    with pytest.raises(UserError, match="1 experiments wait, but none has run for 0 s"):
        queue.run_queue(poll=0.0, repo=tmp_path, stuck_after=0.0)


def test_a_round_wants_the_next_look_of_undecided_entries_and_their_references(catalogue):
    """What a rerun of `make sweep` queues after a round, from the records' verdicts alone:
    the decided keep their seeds, the undecided get their next look, a reference what the
    entries compared with it need (accum-x4 for accum-x8), the baseline the most."""
    from nmtlab.hypotheses import sweep
    from nmtlab.report import compare

    def done(name, outcome, seeds, kind="paired"):
        return compare.Comparison(name, "baseline", "bleu", 0.5, kind=kind, outcome=outcome,
                                  seeds=seeds)

    group = compare.Group("abc", [], {}, "sequential", None, [], named={
        "gelu": done("gelu", "futile", 2), "swa-last-25pct": done("swa-last-25pct", "pending", 2),
        "accum-x4": done("accum-x4", "futile", 2), "accum-x8": done("accum-x8", "pending", 4),
        "plateau-guard": done("plateau-guard", compare.SAME, 2, kind=compare.SAME)})
    chosen = cat.select(catalogue, ["gelu", "swa-last-25pct", "accum-x8", "plateau-guard",
                                    "stock-kernels"])
    assert sweep.targets(catalogue, chosen, group) == {
        "baseline": 4, "accum-x4": 6, "accum-x8": 6, "gelu": 2, "swa-last-25pct": 4,
        "plateau-guard": 2, "stock-kernels": 2}
    assert sweep.targets(catalogue, chosen, None)["baseline"] == 2  # nothing run yet


# ---- queueing preconditions ----------------------------------------------------------------
def git(repo: Path, *args: str) -> None:
    e2e.run(["git", *args], repo)


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git repository holding the real params.yaml, catalogue and a dvc.yaml."""
    (tmp_path / "params.yaml").write_text(PARAMS.read_text())
    (tmp_path / "hypotheses.yaml").write_text(CATALOGUE.read_text())
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "init")
    return tmp_path


def test_queue_refuses_uncommitted_params_with_one_line(repo):
    path = repo / "params.yaml"
    path.write_text(path.read_text().replace("activation: relu", "activation: gelu"))
    proc = subprocess.run([sys.executable, "-m", "nmtlab.hypotheses", "queue"], cwd=repo,
                          capture_output=True, text=True,
                          env={**e2e.env(), "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: params.yaml: uncommitted changes; queued experiments would carry them instead of "
        "starting from the baseline: commit them, or undo them with `git checkout -- params.yaml`"]


def test_preflight_warns_when_dvc_lock_is_not_committed(repo):
    assert len(queue.preflight(repo)) == 1  # no dvc.lock at all
    (repo / "dvc.lock").write_text("schema: '2.0'\n")
    git(repo, "add", "dvc.lock")
    git(repo, "commit", "-qm", "lock")
    assert queue.preflight(repo) == []
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    assert "dvc.lock is not committed" in queue.preflight(repo)[0]


def test_preflight_outside_git_is_refused(tmp_path):
    with pytest.raises(UserError, match="not inside a git repository"):
        queue.preflight(tmp_path)


# ---- end to end: one entry and its references as real queued experiments ----------------------
# The tiny project keeps the default epochs (20) and train.keep_checkpoints (5), so every
# entry's values are valid there unchanged (the whole catalogue is loaded), and 80 pairs in
# batches of 600 tokens give enough optimizer steps for the accumulation warm-ups (accum-x4:
# 3 steps an epoch, 60 in all, warm-up 50; 16 epochs would be too few).
E2E_OVERRIDES = {"train": {"epochs": 20, "keep_checkpoints": 5, "batch_tokens": 600}}


def experiments(shown: list[dict]) -> dict[str, dict]:
    """{experiment name: its data} from `dvc exp show --json`."""
    return {rev.get("name") or e.get("name"): rev.get("data") or {}
            for row in shown for e in row.get("experiments") or [] for rev in e.get("revs") or []}


@pytest.mark.e2e
def test_an_entry_runs_with_its_references_as_queued_experiments(tmp_path):
    project = e2e.make_project(tmp_path / "proj", n_train=80, n_eval=20, overrides=E2E_OVERRIDES)
    assert (project / "hypotheses.yaml").read_text() == CATALOGUE.read_text()
    e2e.dvc("repro", cwd=project)
    e2e.commit_all(project, "baseline run")
    base_params = yaml.safe_load((project / "params.yaml").read_text())
    python = str(e2e.VENV_BIN / "python")
    queued = e2e.run([python, "-m", "nmtlab.hypotheses", "queue", "--seeds", "1", "accum-x8"],
                     project)
    assert "warning" not in queued.stderr, queued.stderr
    assert queued.stdout.count("queued ") == 3, queued.stdout
    # one experiment that fails (train refuses the warm-up): `start` must name it
    e2e.dvc("exp", "run", "--queue", "-n", "too-long-warm-up", "-S",
            "schedule.warmup_steps=100000", cwd=project)
    try:
        ran = e2e.run([python, "-m", "nmtlab.hypotheses", "start", "-j", "2", "--timeout", "600"],
                      project, check=False)
    finally:
        e2e.dvc("queue", "stop", cwd=project, check=False)
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert ran.stderr.strip().splitlines()[-1] == (
        "error: queue: 1 of 4 experiments failed (too-long-warm-up); see `dvc queue logs NAME`")
    shown = experiments(json.loads(e2e.dvc("exp", "show", "--json", cwd=project).stdout))
    catalogue = {h.name: h for h in cat.load(project / "hypotheses.yaml",
                                             project / "params.yaml")}
    for name in ("baseline", "accum-x4", "accum-x8"):
        data = shown[f"{name}-s1"]
        # its own changes on top of the committed baseline, nothing stacked from the others
        want = cat.apply(base_params, {**catalogue[name].set, "seed": 1})
        assert data["params"]["params.yaml"]["data"] == want, name
        assert 0 <= data["metrics"]["data/bleu/metrics.json"]["data"]["test"]["bleu"] <= 100
    assert json.loads(e2e.dvc("status", "--json", cwd=project).stdout) == {}  # untouched
    again = e2e.run([python, "-m", "nmtlab.hypotheses", "queue", "--seeds", "1", "accum-x8"],
                    project).stdout
    assert "0 experiments queued, 3 skipped" in again, again
