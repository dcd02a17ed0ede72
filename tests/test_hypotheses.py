"""The hypotheses catalogue: each entry valid against the default params, rendered as
`dvc exp run -S` overrides Hydra reads back exactly, and (e2e) run as a real experiment."""
from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

import nmtlab.hypotheses as hypotheses
from nmt.errors import UserError
from nmt.params import from_dict
from nmt.schedules import check as check_schedule

from . import e2e

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = REPO / "hypotheses.yaml"
PARAMS = REPO / "params.yaml"
# The default run's batches per epoch: 2,900 pairs (subsample.fraction 0.1 of Multi30k) cut
# by train.batch_tokens 4096, as `stages.train` logs it. Update with those defaults.
DEFAULT_BATCHES_PER_EPOCH = 25
REPORT_NAMES = ["nhead-x2", "ffn-x2", "emb-x2", "enc-layers-x2", "dec-layers-x2", "accum-x4",
                "accum-x8", "gelu", "swa-last-25pct", "exp-decay-0.9", "label-smoothing-0.1",
                "triangular-lr", "plateau-guard", "best-epoch", "ensemble-last-5",
                "sgd-after-adam", "final-combination"]
PROJECT_NAMES = ["stock-kernels"]  # checks of this project's own code, after the report's


@pytest.fixture(scope="module")
def catalogue() -> list[hypotheses.Hypothesis]:
    return hypotheses.load(CATALOGUE, PARAMS)


def hydra_read(override: str):
    (parsed,) = OverridesParser.create().parse_overrides([override])
    return parsed.key_or_group, parsed.value()


def write_catalogue(tmp_path: Path, entries: list[dict]) -> Path:
    path = tmp_path / "hypotheses.yaml"
    path.write_text(yaml.safe_dump({"hypotheses": entries}))
    return path


def entry(name: str = "x", **changes) -> dict:
    return {"name": name, "hypothesis": "It helps.", "report": "It helped.", "metric": "bleu",
            "set": changes}


# ---- the catalogue -------------------------------------------------------------------------
def test_catalogue_names_every_report_hypothesis_and_a_baseline(catalogue):
    names = [h.name for h in catalogue]
    assert names == ["baseline", *REPORT_NAMES, *PROJECT_NAMES]
    assert catalogue[0].set == {}


def test_every_entry_validates_against_the_default_params(catalogue):
    raw = yaml.safe_load(PARAMS.read_text())
    for h in catalogue:
        params = from_dict(hypotheses.apply(raw, h.set))
        params.validate()  # raises UserError naming the key


def test_every_warm_up_ends_before_the_default_run_does(catalogue):
    """train refuses a warm-up longer than training; the schema alone cannot see it."""
    raw = yaml.safe_load(PARAMS.read_text())
    for h in catalogue:
        p = from_dict(hypotheses.apply(raw, h.set))
        steps = math.ceil(DEFAULT_BATCHES_PER_EPOCH / p.train.accum_steps) * p.train.epochs
        check_schedule(p.schedule, steps)


def test_entries_are_faithful_to_the_report(catalogue):
    raw = yaml.safe_load(PARAMS.read_text())
    by_name = {h.name: from_dict(hypotheses.apply(raw, h.set)) for h in catalogue}
    base = by_name["baseline"]
    assert by_name["nhead-x2"].model.nhead == 2 * base.model.nhead
    assert by_name["ffn-x2"].model.dim_feedforward == 2 * base.model.dim_feedforward
    assert by_name["emb-x2"].model.d_model == 2 * base.model.d_model
    assert by_name["enc-layers-x2"].model.num_encoder_layers == 2 * base.model.num_encoder_layers
    assert by_name["dec-layers-x2"].model.num_decoder_layers == 2 * base.model.num_decoder_layers
    assert by_name["accum-x4"].train.accum_steps == 4 and by_name["accum-x8"].train.accum_steps == 8
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
    final = by_name["final-combination"]
    assert final.loss.label_smoothing == 0.1 and final.train.accum_steps == 4
    assert final.schedule.name == "triangular" and final.train.epochs == 15
    assert final.schedule.plateau_patience == 3


def test_the_real_catalogue_lists_and_renders_commands():
    proc = subprocess.run([sys.executable, "-m", "nmtlab.hypotheses", "commands"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "dvc exp run -n baseline"
    assert "dvc exp run -n gelu -S model.activation=gelu" in lines
    assert "dvc exp run -n accum-x4 -S train.accum_steps=4 -S schedule.warmup_steps=50" in lines
    assert len(lines) == 1 + len(REPORT_NAMES) + len(PROJECT_NAMES)


# ---- rendering -----------------------------------------------------------------------------
@pytest.mark.parametrize("value, text", [
    (8, "8"), (0.1, "0.1"), (1e-4, "0.0001"), (1e-05, "1e-05"), (-0.5, "-0.5"), (2.0, "2.0"),
    (True, "true"), (False, "false"), (None, "null"), ("gelu", "gelu"),
    ([0.9, 0.98], "[0.9,0.98]"), ("true", "'true'"), ("1.0", "'1.0'"), ("", "''"),
    ("a b", "'a b'"), ("it's", "'it\\'s'"), ("corpus/train.de", "corpus/train.de"),
])
def test_values_render_as_hydra_reads_them_back(value, text):
    assert hypotheses.hydra_value(value) == text
    key, back = hydra_read(f"optim.x={text}")
    assert key == "optim.x"
    assert back == value and type(back) is type(value)


def test_command_lines(catalogue):
    h = hypotheses.Hypothesis("betas", "h", "r", "bleu",
                              {"optim.betas": [0.9, 0.99], "train.amp": "fp32"})
    assert h.command() == ["dvc", "exp", "run", "-n", "betas", "-S", "optim.betas=[0.9,0.99]",
                           "-S", "train.amp=fp32"]
    assert h.command(queue=True, force=True)[:6] == [
        "dvc", "exp", "run", "--queue", "--force", "-n"]
    table = hypotheses.table(catalogue, markdown=True)
    assert "| gelu | " in table and "`dvc exp run -n gelu -S model.activation=gelu`" in table
    assert "-S 'optim.betas=[0.9,0.99]'" in shlex.join(h.command())


# ---- bad catalogues ------------------------------------------------------------------------
@pytest.mark.parametrize("entries, message", [
    ([entry("wide", **{"model.widht": 2})],
     "entry 'wide': unknown params key 'model.widht' in "),
    ([entry("heads", **{"model.nhaed": 8})], "(did you mean 'model.nhead'?)"),
    ([entry("deep", **{"modle.num_encoder_layers": 6})],
     "entry 'deep': unknown params key 'modle.num_encoder_layers' in "),
    ([entry("deeper", **{"model.nhead.x": 6})], "('model.nhead' has no 'x')"),
    ([entry("act", **{"model.activation": "tanh"})],
     "entry 'act': model.activation: unknown value 'tanh'"),
    ([entry("warm", **{"optim.lr": 0})], "entry 'warm': optim.lr: must be positive"),
    ([entry("swa", **{"swa.last_fraction": 0.5})], "entry 'swa': swa.last_fraction: 0.5 of 20"),
    ([entry("grp", **{"model": {"nhead": 8}})], "entry 'grp': model: values must be"),
    ([entry("Bad Name")], "name must be lower-case"),
    ([entry("twice"), entry("twice")], "entry 'twice': the name is used twice"),
    ([{**entry("x"), "metric": "BLEU"}], "entry 'x': 'metric' must name what the hypothesis "
     "improves, one of bleu, val_loss; got 'BLEU'"),
    ([{k: v for k, v in entry("x").items() if k != "metric"}], "entry 'x': 'metric' must"),
    ([entry("lucky", seed=7)], "entry 'lucky': set: 'seed' is the training seed"),
    ([{"name": "x", "hypothesis": "h", "report": "r", "set": {}, "sett": {}}],
     "entry 'x': unknown field 'sett'"),
    ([{"name": "x", "set": {}, "report": "r"}], "entry 'x': 'hypothesis' must be a sentence"),
])
def test_bad_catalogue_entries_fail_with_one_line_naming_entry_and_key(tmp_path, entries, message):
    path = write_catalogue(tmp_path, entries)
    with pytest.raises(UserError) as e:
        hypotheses.load(path, PARAMS)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_metric_is_the_one_the_hypothesis_names(catalogue):
    for h in catalogue:
        if "lowers the validation loss" in h.hypothesis:
            assert h.metric == "val_loss", h.name
        elif "BLEU" in h.hypothesis or "translates better" in h.hypothesis:
            assert h.metric == "bleu", h.name


def test_replicates_are_named_after_entry_and_seed(catalogue):
    chosen = hypotheses.select(catalogue, ["baseline", "gelu"])
    planned = hypotheses.plan(chosen, seeds=3, baseline_seeds=6)
    names = [hypotheses.replicate_name(h.name, k) for h, k in planned]
    assert names == [f"baseline-s{k}" for k in range(1, 7)] + ["gelu-s1", "gelu-s2", "gelu-s3"]
    gelu = planned[-1][0]
    assert gelu.command(seed=3) == ["dvc", "exp", "run", "-n", "gelu-s3", "-S",
                                    "model.activation=gelu", "-S", "seed=3"]
    assert hypotheses.plan(chosen) == [(chosen[0], None), (chosen[1], None)]


def test_one_entry_with_seeds_brings_the_baseline_replicates(catalogue):
    """`make queue-hypotheses SEEDS=3 NAMES=gelu` must queue baseline seeds too: a pooled
    verdict has nothing to compare with otherwise (it queued gelu-s1..3 alone)."""
    assert [h.name for h in hypotheses.to_queue(catalogue, ["gelu"], seeds=True)] == [
        "baseline", "gelu"]
    assert [h.name for h in hypotheses.to_queue(catalogue, ["gelu"], seeds=False)] == ["gelu"]
    assert [h.name for h in hypotheses.to_queue(catalogue, ["gelu", "baseline"], True)] == [
        "gelu", "baseline"]
    assert len(hypotheses.to_queue(catalogue, [], True)) == len(catalogue)


def test_unknown_name_is_refused(catalogue):
    with pytest.raises(UserError, match="no entry named 'gelo'"):
        hypotheses.select(catalogue, ["gelo"])
    chosen = hypotheses.select(catalogue, ["gelu", "baseline"])
    assert [h.name for h in chosen] == ["gelu", "baseline"]


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
    assert len(hypotheses.preflight(repo)) == 1  # no dvc.lock at all
    (repo / "dvc.lock").write_text("schema: '2.0'\n")
    git(repo, "add", "dvc.lock")
    git(repo, "commit", "-qm", "lock")
    assert hypotheses.preflight(repo) == []
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    assert "dvc.lock is not committed" in hypotheses.preflight(repo)[0]


def test_preflight_outside_git_is_refused(tmp_path):
    with pytest.raises(UserError, match="not inside a git repository"):
        hypotheses.preflight(tmp_path)


# ---- end to end: every entry as a real queued experiment ------------------------------------
# The tiny project keeps the default epochs (20) and train.keep_checkpoints (5), so every
# entry's own values are valid there unchanged (sgd_from_epoch 16, SWA over 5 checkpoints,
# final-combination's 15 epochs), and 160 pairs in batches of 600 tokens give 19 batches an
# epoch, enough optimizer steps for each warm-up even at 8x accumulation (3 steps an epoch,
# 60 in all, warm-up 25). Models stay tiny except where an entry sets a default size itself
# (emb-x2's d_model 512, the 6-layer entries): those run at that size, on a tiny corpus.
E2E_OVERRIDES = {"train": {"epochs": 20, "keep_checkpoints": 5, "batch_tokens": 600}}


def experiments(shown: list[dict]) -> dict[str, dict]:
    """{experiment name: its data} from `dvc exp show --json`, the baseline commit included."""
    out = {}
    for row in shown:
        if row.get("rev") != "workspace" and row.get("data"):
            out[row.get("name") or row["rev"]] = row["data"]
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs") or []:
                out[rev.get("name") or exp.get("name")] = rev.get("data") or {}
    return out


@pytest.mark.e2e
def test_every_catalogue_entry_runs_as_a_queued_experiment(tmp_path):
    project = e2e.make_project(tmp_path / "proj", n_train=80, n_eval=20, overrides=E2E_OVERRIDES)
    assert (project / "hypotheses.yaml").read_text() == CATALOGUE.read_text()
    e2e.dvc("repro", cwd=project)
    e2e.commit_all(project, "baseline run")
    base_params = yaml.safe_load((project / "params.yaml").read_text())
    catalogue = hypotheses.load(project / "hypotheses.yaml", project / "params.yaml")

    python = str(e2e.VENV_BIN / "python")
    queued = e2e.run([python, "-m", "nmtlab.hypotheses", "queue"], project)
    assert "warning" not in queued.stderr, queued.stderr
    # one experiment that fails (train refuses the warm-up): `start` must name it
    e2e.dvc("exp", "run", "--queue", "-n", "too-long-warm-up", "-S",
            "schedule.warmup_steps=100000", cwd=project)
    try:
        ran = e2e.run([python, "-m", "nmtlab.hypotheses", "start", "-j", "2", "--timeout", "900"],
                      project, check=False)
    finally:
        e2e.dvc("queue", "stop", cwd=project, check=False)
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert ran.stderr.strip().splitlines()[-1] == (
        f"error: queue: 1 of {len(catalogue) + 1} experiments failed (too-long-warm-up); "
        "see `dvc queue logs NAME`")
    log = e2e.dvc("queue", "logs", "too-long-warm-up", cwd=project).stdout
    assert "schedule.warmup_steps: 100000 is longer than training" in log

    shown = experiments(json.loads(e2e.dvc("exp", "show", "--json", cwd=project).stdout))
    for h in catalogue:
        assert h.name in shown, f"{h.name} missing from dvc exp show: {sorted(shown)}"
        data = shown[h.name]
        # its own changes on top of the committed baseline, nothing stacked from the others
        assert data["params"]["params.yaml"]["data"] == hypotheses.apply(base_params, h.set), h.name
        bleu = data["metrics"]["data/bleu/metrics.json"]["data"]
        assert 0 <= bleu["test"]["bleu"] <= 100, h.name
        train = data["metrics"]["data/train/metrics.json"]["data"]
        assert train["epochs"] == h.set.get("train.epochs", base_params["train"]["epochs"]), h.name
    assert json.loads(e2e.dvc("status", "--json", cwd=project).stdout) == {}  # workspace untouched
