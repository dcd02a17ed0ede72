"""End-to-end: the real `dvc repro` / `dvc exp run` on a tiny copy of the project."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from . import e2e

pytestmark = pytest.mark.e2e

DOWNSTREAM_OF_TRAIN = {"train", "swa-average", "translate", "bleu", "plots"}


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """A tiny project after one full `dvc repro`, dvc.lock committed."""
    project = e2e.make_project(tmp_path_factory.mktemp("base") / "proj")
    proc = e2e.dvc("repro", cwd=project)
    assert e2e.stages_run(proc) == {"prepare", "subsample", *DOWNSTREAM_OF_TRAIN}
    e2e.commit_all(project, "baseline run")
    return project


@pytest.fixture
def project(built, tmp_path):
    return e2e.clone_project(built, tmp_path / "proj")


def test_repro_writes_every_output(built):
    bleu = json.loads((built / "data/bleu/metrics.json").read_text())
    signatures = json.loads((built / "data/bleu/signatures.json").read_text())
    for split in ("val", "test"):
        assert 0 <= bleu[split]["bleu"] <= 100 and bleu[split]["chrf"] > 0
        assert "tok:13a" in signatures[split]["bleu"] and "nc:6" in signatures[split]["chrf"]
    train = json.loads((built / "data/train/metrics.json").read_text())
    assert train["epochs"] == 8 and train["stopped_by"] == "epochs"
    assert train["tokens_per_s"] > 0 and train["peak_memory_mb"] > 0
    for png in ("loss.png", "lr.png"):
        assert (built / "reports/figures" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    hyps = (built / "data/translations/test.hyp").read_text().splitlines()
    assert len(hyps) == 60 and any(h.strip() for h in hyps)
    assert len(list((built / "data/train/checkpoints").glob("epoch_*.pt"))) == 2


def test_scores_equal_an_independent_sacrebleu_run(built):
    """BLEU and chrF in the metrics are what the sacrebleu command line gives on the same
    hypothesis and reference files (chrF too: the tiny model's BLEU may be near 0)."""
    bleu = json.loads((built / "data/bleu/metrics.json").read_text())
    for split in ("val", "test"):
        cli = subprocess.run(
            [str(e2e.VENV_BIN / "sacrebleu"), str(built / f"data/prepared/{split}.tgt"),
             "-i", str(built / f"data/translations/{split}.hyp"), "-m", "bleu", "chrf",
             "-b", "-w", "4", "-f", "text"],
            capture_output=True, text=True, check=True).stdout.split()
        independent = [float(x) for x in cli]
        assert len(independent) == 2 and independent[1] > 0, cli
        assert [bleu[split]["bleu"], bleu[split]["chrf"]] == pytest.approx(independent, abs=0.0051)


def test_dag_is_the_documented_chain(built):
    out = e2e.dvc("dag", "--md", cwd=built).stdout
    nodes = dict(re.findall(r'(node\d+)\["([^"]+)"\]', out))
    edges = {(nodes[a], nodes[b]) for a, b in re.findall(r"(node\d+)-->(node\d+)", out)}
    chain = ["prepare", "subsample", "train", "swa-average", "translate", "bleu", "plots"]
    assert set(nodes.values()) == set(chain)
    assert {(a, b) for a, b in zip(chain, chain[1:])} <= edges


def test_no_change_repro_does_nothing(project):
    assert json.loads(e2e.dvc("status", "--json", cwd=project).stdout) == {}
    assert e2e.stages_run(e2e.dvc("repro", cwd=project)) == set()


@pytest.mark.parametrize("change, expected", [
    ("model.activation=gelu", DOWNSTREAM_OF_TRAIN),
    ("translate.beam_size=1", {"translate", "bleu", "plots"}),
    ("swa.last_epochs=2", {"swa-average", "translate", "bleu", "plots"}),
    ("subsample.fraction=0.5", {"subsample", *DOWNSTREAM_OF_TRAIN}),
    ("bleu.lowercase=true", {"bleu", "plots"}),
    ("plots.dpi=80", {"plots"}),
])
def test_exp_run_reruns_only_affected_stages(project, change, expected):
    proc = e2e.dvc("exp", "run", "-S", change, cwd=project)
    assert e2e.stages_run(proc) == expected
    shown = json.loads(e2e.dvc("exp", "show", "--json", cwd=project).stdout)
    assert shown, "dvc exp show lists nothing"


def test_exp_show_lists_bleu(project):
    e2e.dvc("exp", "run", "-n", "beam1", "-S", "translate.beam_size=1", cwd=project)
    csv = e2e.dvc("exp", "show", "--csv", cwd=project).stdout
    header = csv.splitlines()[0]
    for col in ("test.bleu", "test.chrf", "best_val_loss"):
        assert col in header, header
    assert "signature" not in header, "a signature's | would break dvc exp show --md"
    assert "beam1" in csv
