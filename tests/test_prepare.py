"""Stages prepare and subsample, run as DVC runs them: `python -m stages.<name>` in a project folder."""
from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nmt.corpus import MIRROR_ENV, MULTI30K_SHA256

REPO = Path(__file__).resolve().parents[1]
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d nmt: ")
PREPARED_FILES = {"train.src", "train.tgt", "val.src", "val.tgt", "test.src", "test.tgt",
                  "spm.model", "spm.vocab", "stats.json"}


def run_stage(project: Path, stage: str, params: dict, mirror: Path | None = None
              ) -> subprocess.CompletedProcess:
    """Write params.yaml into `project` and run the stage there."""
    project.mkdir(exist_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != MIRROR_ENV}
    env["PYTHONPATH"] = str(REPO)
    if mirror is not None:
        env[MIRROR_ENV] = str(mirror)
    return subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def files_params(files: dict[str, Path], **tokenizer: object) -> dict:
    """params.yaml content for a user corpus; small vocabulary for the tiny corpus."""
    return {
        "data": {"corpus": "files", "files": {k: str(v) for k, v in files.items()}},
        "tokenizer": {"vocab_size": 100, **tokenizer},
    }


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one error line a failed stage prints after its log lines."""
    assert result.returncode == 2, result.stderr
    other = [line for line in result.stderr.splitlines() if not LOG_LINE.match(line)]
    assert len(other) == 1 and other[0].startswith("error: "), result.stderr
    assert result.stderr.splitlines()[-1] == other[0]
    return other[0]


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def stats(path: Path) -> dict:
    return json.loads((path / "stats.json").read_text(encoding="utf-8"))


# --- prepare -----------------------------------------------------------------

def test_prepare_user_corpus(tiny_corpus, tmp_path):
    with open(tiny_corpus["train_src"], "a", encoding="utf-8") as f:
        f.write("Wort " * 10_000 + "\n")
    with open(tiny_corpus["train_tgt"], "a", encoding="utf-8") as f:
        f.write("word\n")
    tiny_corpus["val_src"].write_bytes(b"ein  Hund\r\n\r\nzwei\tKatzen\r\n")
    tiny_corpus["val_tgt"].write_bytes(b"a dog \r\n\r\ntwo cats\r\n")
    project = tmp_path / "project"

    result = run_stage(project, "prepare", files_params(tiny_corpus))

    assert result.returncode == 0, result.stderr
    prepared = project / "data/prepared"
    assert {p.name for p in prepared.iterdir()} == PREPARED_FILES
    assert read_lines(prepared / "val.src") == ["ein Hund", "", "zwei Katzen"]
    assert read_lines(prepared / "val.tgt") == ["a dog", "", "two cats"]
    assert b"\r" not in (prepared / "val.src").read_bytes()
    assert len(read_lines(prepared / "train.src")) == 300
    s = stats(prepared)
    assert s["corpus"] == "files" and (s["src_lang"], s["tgt_lang"]) == ("de", "en")
    assert s["sentences"] == {"train": 300, "val": 3, "test": 40}
    assert s["train_read"] == 301
    assert s["dropped"] == {"empty": 0, "too_long": 1, "length_ratio": 0}
    assert s["test_has_reference"] is True
    assert s["tokenizer"] == {"shared": True, "model_type": "unigram",
                              "src_vocab_size": 100, "tgt_vocab_size": 100}
    assert set(s["mean_tokens"]["test"]) == {"src", "tgt"}
    assert s["mean_tokens"]["train"]["src"] > 1


def test_prepare_without_test_reference(tiny_corpus, tmp_path):
    del tiny_corpus["test_tgt"]
    project = tmp_path / "project"

    result = run_stage(project, "prepare", files_params(
        tiny_corpus, shared=False, model_type="bpe", vocab_size=200))

    assert result.returncode == 0, result.stderr
    prepared = project / "data/prepared"
    assert {p.name for p in prepared.iterdir()} == (
        PREPARED_FILES - {"test.tgt", "spm.model", "spm.vocab"}
        | {"spm.src.model", "spm.src.vocab", "spm.tgt.model", "spm.tgt.vocab"})
    s = stats(prepared)
    assert s["test_has_reference"] is False
    assert set(s["mean_tokens"]["test"]) == {"src"}
    assert s["tokenizer"]["shared"] is False


def _misaligned(files: dict[str, Path]) -> Path:
    files["train_tgt"].write_text("only one line\n", encoding="utf-8")
    return files["train_tgt"]


def _non_utf8(files: dict[str, Path]) -> Path:
    files["test_src"].write_bytes(b"Stra\xdfe\n")
    return files["test_src"]


def _empty(files: dict[str, Path]) -> Path:
    files["val_tgt"].write_bytes(b"")
    return files["val_tgt"]


def _missing(files: dict[str, Path]) -> Path:
    files["val_src"].unlink()
    return files["val_src"]


@pytest.mark.parametrize("spoil", [_misaligned, _non_utf8, _empty, _missing])
def test_prepare_bad_file_fails_cleanly(tiny_corpus, tmp_path, spoil):
    bad = spoil(tiny_corpus)
    project = tmp_path / "project"

    result = run_stage(project, "prepare", files_params(tiny_corpus))

    assert str(bad) in error_line(result)
    assert not (project / "data").exists()


def test_prepare_vocab_too_large_fails_cleanly(tiny_corpus, tmp_path):
    project = tmp_path / "project"

    result = run_stage(project, "prepare", files_params(tiny_corpus, vocab_size=5000))

    assert re.search(r"tokenizer\.vocab_size: 5000 .* set it to \d+ or less", error_line(result))
    assert not (project / "data/prepared").exists()
    assert not list((project / "data").glob(".tmp-*"))  # no half-written folder left behind


def test_prepare_checksum_mismatch(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    bad = mirror / "train.de.gz"  # the first file prepare copies
    bad.write_bytes(gzip.compress(b"Zwei Hunde.\n"))
    project = tmp_path / "project"

    result = run_stage(project, "prepare", {}, mirror=mirror)

    line = error_line(result)
    assert str(bad) in line and MULTI30K_SHA256[bad.name] in line
    assert not (project / "data/prepared").exists()
    assert not (project / "data/raw" / bad.name).exists()


@pytest.mark.e2e
def test_prepare_and_subsample_multi30k_en_de(multi30k_mirror, tmp_path):
    """The real Multi30k: from the mirror when there is one, else downloaded (never skipped)."""
    project = tmp_path / "project"
    params = {"data": {"src_lang": "en", "tgt_lang": "de"},
              "tokenizer": {"vocab_size": 1000, "model_type": "bpe"}}

    prepared = run_stage(project, "prepare", params, mirror=multi30k_mirror)
    assert prepared.returncode == 0, prepared.stderr
    assert run_stage(project, "subsample", params).returncode == 0

    prepared = project / "data/prepared"
    assert read_lines(prepared / "test.src")[0] == "A man in an orange hat starring at something."
    assert read_lines(prepared / "test.tgt")[0] == "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt."
    s = stats(prepared)
    assert (s["corpus"], s["src_lang"], s["tgt_lang"]) == ("multi30k", "en", "de")
    assert s["sentences"] == {"train": 29000 - sum(s["dropped"].values()), "val": 1014, "test": 1000}
    assert s["test_has_reference"] is True
    sub = stats(project / "data/subsampled")
    assert sub["pairs_kept"] == round(0.1 * s["sentences"]["train"])


# --- subsample ---------------------------------------------------------------

def _fake_prepared(project: Path, n: int) -> None:
    prepared = project / "data/prepared"
    prepared.mkdir(parents=True)
    (prepared / "train.src").write_text("".join(f"src {i}\n" for i in range(n)), encoding="utf-8")
    (prepared / "train.tgt").write_text("".join(f"tgt {i}\n" for i in range(n)), encoding="utf-8")


def _subsample(project: Path, fraction: float, seed: int) -> tuple[list[str], list[str]]:
    result = run_stage(project, "subsample", {"seed": 99,  # training's seed: not the draw's
                                              "subsample": {"fraction": fraction, "seed": seed}})
    assert result.returncode == 0, result.stderr
    out = project / "data/subsampled"
    assert {p.name for p in out.iterdir()} == {"train.src", "train.tgt", "stats.json"}
    return read_lines(out / "train.src"), read_lines(out / "train.tgt")


def test_subsample_fraction_order_and_determinism(tmp_path):
    project = tmp_path / "project"
    _fake_prepared(project, 1000)

    src, tgt = _subsample(project, 0.25, seed=1)
    assert len(src) == 250
    indices = [int(line.split()[1]) for line in src]
    assert indices == sorted(indices)
    assert tgt == [f"tgt {i}" for i in indices]
    assert stats(project / "data/subsampled") == {
        "fraction": 0.25, "seed": 1, "pairs_in": 1000, "pairs_kept": 250}

    assert _subsample(project, 0.25, seed=1) == (src, tgt)
    assert _subsample(project, 0.25, seed=2)[0] != src
    assert _subsample(project, 1.0, seed=1)[0] == [f"src {i}" for i in range(1000)]
    assert len(_subsample(project, 0.0001, seed=1)[0]) == 1


def test_subsample_without_prepare_fails_cleanly(tmp_path):
    project = tmp_path / "project"

    result = run_stage(project, "subsample", {})

    assert "data/prepared/train.src" in error_line(result)
    assert not (project / "data/subsampled").exists()
