"""End-to-end tests of models in and out (issue 14) on a tiny synthetic-corpus project:
`nmtlab translate` (workspace, --exp, errors), the CTranslate2 export against the
PyTorch beam search; choosing the best epoch; ensemble decoding; train.init_from."""
from __future__ import annotations

import json
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


def epochs_tsv(project) -> list[dict]:
    from nmt import trainlog

    return trainlog.read(project / "data/train/log/epochs.tsv")


def info(project) -> dict:
    return json.loads((project / "data/model/info.json").read_text())


AFTER_TRAIN = {"swa-average", "translate", "bleu", "plots"}


def test_choosing_the_best_epoch_reruns_only_swa_average_and_after(built, tmp_path):
    project = e2e.clone_project(built, tmp_path / "proj")
    rows = epochs_tsv(project)
    kept = [int(p.stem.split("_")[1]) for p in (project / "data/train/checkpoints").glob("*.pt")]
    best_loss = min(rows, key=lambda r: (r["val_loss"], -r["epoch"]))
    assert int(best_loss["epoch"]) in kept  # train.keep_best kept it, beside the last two

    e2e.write_params(project, {"swa": {"best_by": "val_loss"}})
    assert e2e.stages_run(e2e.dvc("repro", cwd=project)) <= AFTER_TRAIN
    assert info(project)["epochs_averaged"] == [int(best_loss["epoch"])]

    e2e.write_params(project, {"swa": {"best_by": "val_bleu", "best_epochs": 2}})
    proc = e2e.dvc("repro", cwd=project)
    assert "swa-average" in e2e.stages_run(proc) and e2e.stages_run(proc) <= AFTER_TRAIN
    bleu = {int(e): b for e, b in info(project)["val_bleu"].items()}
    assert sorted(bleu) == sorted(kept)  # greedy val BLEU of every kept checkpoint
    best_two = sorted(sorted(bleu, key=lambda e: (-bleu[e], -e))[:2])
    assert info(project)["epochs_averaged"] == best_two


def test_ensemble_decoding_in_the_stage_and_the_command(built, tmp_path):
    project = e2e.clone_project(built, tmp_path / "proj")
    e2e.write_params(project, {"translate": {"ensemble": 2}})
    assert e2e.stages_run(e2e.dvc("repro", cwd=project)) <= {"translate", "bleu", "plots"}
    stats = json.loads((project / "data/translations/stats.json").read_text())
    assert stats["model"] == "ensemble of epochs 15, 14"
    hyp = (project / "data/translations/test.hyp").read_text(encoding="utf-8")
    assert ok(nmtlab(project, "translate", "-i", "data/prepared/test.src")).stdout == hyp
    bleu = json.loads((project / "data/bleu/metrics.json").read_text())["test"]["bleu"]
    assert bleu > 50


def test_init_from_starts_where_the_model_left_off(built, tmp_path):
    project = e2e.clone_project(built, tmp_path / "proj")
    fresh_first = epochs_tsv(project)[0]["val_loss"]
    ok(nmtlab(project, "init-from", "data/model/averaged.pt", "--rev", "HEAD"))
    assert (project / "init/model.pt.dvc").is_file()
    e2e.write_params(project, {"train": {"init_from": "init/model.pt", "epochs": 1,
                                         "keep_checkpoints": 1}})
    e2e.commit_all(project, "init from the baseline model")
    assert "train" in e2e.stages_run(e2e.dvc("repro", cwd=project))
    first = epochs_tsv(project)[0]["val_loss"]
    assert first < 0.5 * fresh_first, (first, fresh_first)

    e2e.write_params(project, {"model": {"d_model": 64}})
    proc = e2e.dvc("repro", cwd=project, check=False)
    assert proc.returncode != 0
    assert "error: train.init_from: init/model.pt has another model: d_model 32 (here 64)" \
        in proc.stdout + proc.stderr
