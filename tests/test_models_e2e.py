"""End-to-end tests of models in and out (issue 14) on a tiny synthetic-corpus project:
`nmtlab translate` (workspace, --exp, errors), the CTranslate2 export against the
PyTorch beam search."""
from __future__ import annotations

import subprocess
import sys

import pytest
import sacrebleu

from . import e2e

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny project on the synthetic corpus, trained to test BLEU ~80 (so beam search
    has real choices and hypotheses end by themselves), after `dvc repro`, committed."""
    project = e2e.make_project(tmp_path_factory.mktemp("models") / "proj", overrides={
        "schedule": {"name": "constant"}, "train": {"epochs": 15}})
    e2e.use_synthetic_corpus(project)
    e2e.dvc("repro", cwd=project)
    e2e.commit_all(project, "baseline run")
    return project


def nmtlab(project, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nmtlab", *args], cwd=project, env=e2e.env(),
                          input=stdin, capture_output=True, text=True)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_translate_equals_the_translate_stage_byte_for_byte(built):
    hyp = (built / "data/translations/test.hyp").read_text(encoding="utf-8")
    assert ok(nmtlab(built, "translate", "-i", "data/prepared/test.src")).stdout == hyp
    out = built / "own.en"
    ok(nmtlab(built, "translate", "-i", "data/prepared/test.src", "-o", str(out)))
    assert out.read_text(encoding="utf-8") == hyp


def test_translate_reads_stdin_and_normalises_like_prepare(built):
    first = (built / "data/prepared/test.src").read_text(encoding="utf-8").splitlines()[0]
    want = (built / "data/translations/test.hyp").read_text(encoding="utf-8").splitlines()[0]
    messy = "  " + first.replace(" ", " \t ") + "  "  # whitespace runs collapse, as in prepare
    assert ok(nmtlab(built, "translate", stdin=f"{messy}\n\n")).stdout == f"{want}\n\n"


def test_translate_from_another_experiment_without_switching(built, tmp_path):
    project = e2e.clone_project(built, tmp_path / "proj")
    e2e.dvc("exp", "run", "--temp", "-n", "greedy", "-S", "translate.beam_size=1", cwd=project)
    workspace_hyp = (project / "data/translations/test.hyp").read_text(encoding="utf-8")
    greedy_hyp = e2e.read_at(project, "data/translations/test.hyp", "greedy")
    got = ok(nmtlab(project, "translate", "--exp", "greedy", "-i", "data/prepared/test.src"))
    assert got.stdout == greedy_hyp
    assert (project / "data/translations/test.hyp").read_text(encoding="utf-8") == workspace_hyp
    assert "beam_size: 2" in (project / "params.yaml").read_text()


def test_translate_errors_are_one_line(built, tmp_path):
    proc = nmtlab(built, "translate", "--exp", "no-such-exp", stdin="Ein Hund.\n")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --exp no-such-exp: no such")
    fresh = e2e.make_project(tmp_path / "fresh")
    proc = nmtlab(fresh, "translate", stdin="Ein Hund.\n")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("error: data/model/averaged.pt: no trained")


def test_ct2_float32_matches_the_pytorch_beam_search(built):
    for q in ("float32", "int8"):
        ok(nmtlab(built, "export-ct2", "--out", f"ct2-{q}", "--quantization", q))
    refs = (built / "data/prepared/test.tgt").read_text(encoding="utf-8").splitlines()
    ours = (built / "data/translations/test.hyp").read_text(encoding="utf-8").splitlines()
    ct2 = ok(nmtlab(built, "translate", "-i", "data/prepared/test.src", "--ct2",
                    "ct2-float32")).stdout.splitlines()
    same = sum(a == b for a, b in zip(ours, ct2))
    assert len(ct2) == len(ours) and same >= 0.99 * len(ours), f"{same}/{len(ours)}"
    bleu = [sacrebleu.corpus_bleu(h, [refs]).score for h in (ours, ct2)]
    assert abs(bleu[0] - bleu[1]) <= 0.2 and bleu[0] > 20, bleu
    int8 = ok(nmtlab(built, "translate", "-i", "data/prepared/test.src", "--ct2",
                     "ct2-int8")).stdout.splitlines()
    assert len(int8) == len(ours) and sacrebleu.corpus_bleu(int8, [refs]).score > 0.5 * bleu[0]
