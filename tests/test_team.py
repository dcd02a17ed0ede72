"""End-to-end: experiments shared through a git remote and a DVC remote (docs/team.md).

One clone runs two experiments and pushes them (`dvc exp push`: git refs to a bare
repository, models/translations/metrics to a local-folder DVC remote); a second
clone of the bare repository pulls them (`dvc exp pull`), lists them with their
BLEU; a third pulls the refs alone and builds the report from the remote, without
retraining anything.
"""
from __future__ import annotations

import csv
import io
import json
import re
import sys

import pytest

from . import e2e
from .test_report import table

pytestmark = pytest.mark.e2e

EXPERIMENTS = {"gelu": "model.activation=gelu", "beam1": "translate.beam_size=1"}


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """(first clone, second clone, DVC remote folder) after push and pull."""
    root = tmp_path_factory.mktemp("team")
    origin, storage = root / "origin.git", root / "dvc-storage"
    e2e.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], root)
    first = e2e.make_project(root / "first", overrides={"train": {"epochs": 4,
                                                                  "batch_tokens": 300}})
    e2e.use_synthetic_corpus(first)
    e2e.run(["git", "remote", "add", "origin", str(origin)], first)
    # An absolute path: DVC 3.67.1's exp push/pull resolve a relative local remote against
    # another folder (docs/team.md).
    e2e.dvc("remote", "add", "-d", "storage", str(storage), cwd=first)
    e2e.dvc("repro", cwd=first)
    e2e.commit_all(first, "baseline run")  # dvc.lock and the remote's config
    e2e.dvc("push", cwd=first)
    e2e.run(["git", "push", "-q", "origin", "main"], first)
    for name, change in EXPERIMENTS.items():
        e2e.dvc("exp", "run", "--temp", "-n", name, "-S", change, cwd=first)
    pushed = e2e.dvc("exp", "push", "origin", *EXPERIMENTS, cwd=first)
    assert "Pushed experiment" in pushed.stdout, pushed.stdout

    second = root / "second"
    e2e.run(["git", "clone", "-q", str(origin), str(second)], root)
    pulled = e2e.dvc("exp", "pull", "origin", *EXPERIMENTS, cwd=second)
    assert "Pulled experiment" in pulled.stdout, pulled.stdout
    return first, second, storage


def exp_show(project) -> dict[str, dict[str, str]]:
    rows = csv.DictReader(io.StringIO(e2e.dvc("exp", "show", "--csv", cwd=project).stdout))
    return {r["Experiment"] or r["rev"]: r for r in rows}


def test_pulled_experiments_show_with_the_bleu_they_had(team):
    first, second, _ = team
    here, there = exp_show(first), exp_show(second)
    for name, change in EXPERIMENTS.items():
        key, value = change.split("=")
        assert there[name][key] == value
        assert there[name]["test.bleu"] == here[name]["test.bleu"] != ""
        assert there[name]["best_val_loss"] == here[name]["best_val_loss"]


def test_pulled_experiments_bring_their_models_and_translations(team):
    first, second, _ = team
    for name in EXPERIMENTS:
        for path in ("data/translations/test.hyp", "data/model/info.json",
                     "data/train/metrics.json"):
            assert e2e.read_at(second, path, name) == e2e.read_at(first, path, name)
    e2e.dvc("exp", "apply", "gelu", cwd=second)
    e2e.dvc("checkout", cwd=second)  # from the pulled cache: no stage reruns
    assert (second / "data/model/averaged.pt").stat().st_size > 0
    assert json.loads(e2e.dvc("status", "--json", cwd=second).stdout) == {}


def test_report_from_refs_alone_reads_everything_from_the_remote(team, tmp_path):
    """A third clone pulls only the experiments' refs (--no-cache) and has no DVC cache at
    all: the report reads metrics and translations from the DVC remote, and its
    significance tests equal those of the clone that ran the experiments."""
    first, _, _ = team
    reader = tmp_path / "reader"
    e2e.run(["git", "clone", "-q", str(first.parent / "origin.git"), str(reader)], tmp_path)
    e2e.dvc("exp", "pull", "--no-cache", "origin", *EXPERIMENTS, cwd=reader)
    e2e.run([sys.executable, "-m", "nmtlab.report"], reader)
    assert not (reader / ".dvc" / "cache").exists()
    e2e.run([sys.executable, "-m", "nmtlab.report"], first)
    ours, theirs = ((p / "reports/experiments.md").read_text() for p in (reader, first))
    assert "Baseline: 1 run(s) with no params change, seeds 1234" in ours  # the commit's run
    header = "| hypothesis | ΔBLEU [95% CI] | p | verdict"
    tests = table(ours, header)
    assert set(tests) == set(EXPERIMENTS)
    assert all(re.fullmatch(r"[-+]\d+\.\d\d \[[-+]\d+\.\d\d, [-+]\d+\.\d\d\]",
                            row["ΔBLEU [95% CI]"]) for row in tests.values())
    assert tests == table(theirs, header)
    runs = table(ours, "| run | arm | seed")
    for name in EXPERIMENTS:
        bleu = json.loads(e2e.read_at(first, "data/bleu/metrics.json", name))
        assert runs[name]["test BLEU"] == f"{bleu['test']['bleu']:.2f}"
