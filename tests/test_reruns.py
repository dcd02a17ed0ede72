"""End-to-end: the README's rerun rules (its "The pipeline" section), checked group by group with
the real dvc on a built tiny project: `dvc status` names the stages that read the changed
key, and `dvc repro` reruns them and everything downstream whose inputs then changed."""
from __future__ import annotations

import json

import pytest
import yaml

from . import e2e

pytestmark = pytest.mark.e2e

ALL = {"prepare", "subsample", "train", "swa-average", "translate", "bleu", "plots"}
FROM_SUBSAMPLE = ALL - {"prepare"}
FROM_TRAIN = FROM_SUBSAMPLE - {"subsample"}
FROM_SWA = FROM_TRAIN - {"train"}

# params group: (one changed key, the stages reading it, the stages `dvc repro` reruns)
RERUNS = {
    # the training seed: same prepared data, same subsample (docs/seeds.md)
    "seed": ({"seed": 7}, {"train"}, FROM_TRAIN),
    "data": ({"data": {"max_words": 25}}, {"prepare"}, ALL),  # drops the longest pairs
    "tokenizer": ({"tokenizer": {"vocab_size": 300}}, {"prepare"}, ALL),
    "subsample": ({"subsample": {"fraction": 0.5}}, {"subsample"}, FROM_SUBSAMPLE),
    "model": ({"model": {"activation": "gelu"}}, {"train"}, FROM_TRAIN),
    "loss": ({"loss": {"label_smoothing": 0.1}}, {"train"}, FROM_TRAIN),
    "optim": ({"optim": {"lr": 0.002}}, {"train"}, FROM_TRAIN),
    "schedule": ({"schedule": {"name": "cosine"}}, {"train"}, FROM_TRAIN),
    "train": ({"train": {"accum_steps": 2}}, {"train"}, FROM_TRAIN),
    "swa": ({"swa": {"last_epochs": 2}}, {"swa-average"}, FROM_SWA),
    "translate": ({"translate": {"beam_size": 1}}, {"translate"}, {"translate", "bleu", "plots"}),
    "bleu": ({"bleu": {"lowercase": True}}, {"bleu"}, {"bleu", "plots"}),
    "plots": ({"plots": {"dpi": 80}}, {"plots"}, {"plots"}),
}
# more keys than one per group
RERUNS_MORE = {
    # The tiny project keeps every pair (fraction 1.0): another draw keeps the same pairs, and
    # only stats.json's seed changes, so train reruns and trains the same weights again.
    "subsample.seed": ({"subsample": {"seed": 7}}, {"subsample"},
                       {"subsample", "train", "swa-average"}),
}


ROWS = {**RERUNS, **RERUNS_MORE}
# The first group of each distinct rerun set runs the whole `dvc repro`. The others run only
# their own stages (`dvc repro --single-item`) and check that the change reaches the stages
# that read those stages' outputs: from there on `dvc repro` goes as for the first group.
WHOLE_REPRO = {next(g for g, row in ROWS.items() if row[2] == reruns)
               for _, _, reruns in ROWS.values()}


def readers(project, stages: set[str]) -> set[str]:
    """The stages of dvc.yaml with a dependency that one of `stages` writes."""
    spec = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]

    def paths(entries) -> set[str]:
        return {e if isinstance(e, str) else next(iter(e)) for e in entries or []}

    written = set().union(*(paths(spec[s].get("outs")) | paths(spec[s].get("metrics"))
                            | paths(spec[s].get("plots")) for s in stages))
    return {name for name, stage in spec.items() if paths(stage.get("deps")) & written}


def dotted(change: dict) -> str:
    (key, value), = change.items()
    return f"{key}.{dotted(value)}" if isinstance(value, dict) else key


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny project after one full `dvc repro`, dvc.lock committed."""
    project = e2e.make_project(tmp_path_factory.mktemp("reruns") / "proj")
    assert e2e.stages_run(e2e.dvc("repro", cwd=project)) == ALL
    e2e.commit_all(project, "baseline run")
    return project


def test_every_params_group_has_a_row():
    groups = set(yaml.safe_load((e2e.REPO / "params.yaml").read_text()))
    assert groups == set(RERUNS)


def test_every_rerun_set_runs_one_whole_repro():
    assert {"seed", "data", "subsample", "swa", "translate", "bleu", "plots",
            "subsample.seed"} == WHOLE_REPRO


@pytest.mark.parametrize("group", ROWS)
def test_a_params_change_reruns_exactly_its_stages(built, tmp_path, group):
    change, direct, reruns = ROWS[group]
    project = e2e.clone_project(built, tmp_path / "proj")
    e2e.write_params(project, change)
    status = json.loads(e2e.dvc("status", "--json", cwd=project).stdout)
    assert set(status) == direct
    key = dotted(change)
    for stage in direct:  # [{"changed deps": {"params.yaml": {"model": "modified"}}}]
        changed = [k for entry in status[stage]
                   for k in entry.get("changed deps", {}).get("params.yaml", {})]
        assert any(key == k or key.startswith(k + ".") for k in changed), status[stage]
    if group in WHOLE_REPRO:
        assert e2e.stages_run(e2e.dvc("repro", cwd=project)) == reruns
        assert json.loads(e2e.dvc("status", "--json", cwd=project).stdout) == {}
        return
    ran = set()
    for stage in direct:
        ran |= e2e.stages_run(e2e.dvc("repro", "--single-item", stage, cwd=project))
    assert ran == direct
    # their outputs changed: every stage that reads them is now out of date
    status = json.loads(e2e.dvc("status", "--json", cwd=project).stdout)
    assert set(status) == readers(project, direct) - direct
    assert set(status) <= reruns
