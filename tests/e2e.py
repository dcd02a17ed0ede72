"""Helpers for end-to-end tests: a tiny copy of the project run with the real dvc.

The tiny project uses the user-corpus path (data.corpus: files) with the first
few hundred Multi30k pairs, from the excerpt committed in tests/fixtures/multi30k
(so no test needs the Multi30k mirror or a download), a 2-layer 32-d model and
2 epochs, so a full `dvc repro` takes well under a minute on 2 CPU cores.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# The Multi30k files: $NMT_DATA_MIRROR as the README sets it, else ../shared beside the project.
MIRROR = Path(os.environ.get("NMT_DATA_MIRROR") or REPO.parent / "shared" / "data" / "multi30k")
# The first 800 train, 60 val and 60 test (test_2016_flickr) pairs of Multi30k: {split}.{de,en}.
MULTI30K_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "multi30k"
VENV_BIN = Path(sys.executable).parent

TINY = {
    "data": {"corpus": "files", "files": {
        "train_src": "corpus/train.de", "train_tgt": "corpus/train.en",
        "val_src": "corpus/val.de", "val_tgt": "corpus/val.en",
        "test_src": "corpus/test.de", "test_tgt": "corpus/test.en"}},
    "tokenizer": {"vocab_size": 400},
    "subsample": {"fraction": 1.0},
    "model": {"d_model": 32, "nhead": 2, "dim_feedforward": 64, "num_encoder_layers": 1,
              "num_decoder_layers": 1, "dropout": 0.0},
    "optim": {"lr": 0.003},
    "schedule": {"warmup_steps": 4},
    "train": {"epochs": 8, "batch_tokens": 1500, "keep_checkpoints": 2, "amp": "fp32",
              "num_threads": 1},
    "translate": {"beam_size": 2, "batch_sentences": 64},
}


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{VENV_BIN}{os.pathsep}{e.get('PATH', '')}"
    e.update(DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
             GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com",
             PYTHONPATH="", OMP_NUM_THREADS="1")
    e.pop("DVC_EXP_NAME", None)
    return e


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(VENV_BIN / "dvc"), *args], cwd, check)


def stages_run(proc: subprocess.CompletedProcess) -> set[str]:
    """Names of the stages a dvc repro / exp run actually executed."""
    return set(re.findall(r"Running stage '([^']+)'", proc.stdout + proc.stderr))


def deep_update(base: dict, over: dict) -> dict:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = v
    return base


def write_params(project: Path, overrides: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(deep_update(params, overrides), sort_keys=False))


def head_lines(path: Path, n: int) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) < n:
        raise ValueError(f"{path} has {len(lines)} lines, {n} asked for")
    return lines[:n]


def make_project(dest: Path, n_train: int = 400, n_eval: int = 60,
                 overrides: dict | None = None) -> Path:
    """Copy the project's tracked sources into `dest`, with a tiny corpus and params, as a
    fresh git + dvc repository with one commit."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("nmt", "nmtlab", "stages", "corpus", "init"):
        shutil.copytree(REPO / name, dest / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("dvc.yaml", "params.yaml", ".gitignore", "hypotheses.yaml"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, dest / name)
    corpus = dest / "corpus"
    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        for lang in ("de", "en"):
            (corpus / f"{split}.{lang}").write_text(
                "".join(head_lines(MULTI30K_FIXTURE / f"{split}.{lang}", n)), encoding="utf-8")
    write_params(dest, deep_update(yaml.safe_load(yaml.safe_dump(TINY)), overrides or {}))
    run(["git", "init", "-q", "-b", "main"], dest)
    dvc("init", "-q", cwd=dest)
    dvc("config", "core.analytics", "false", cwd=dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "tiny project"], dest)
    return dest


def commit_all(project: Path, message: str) -> None:
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", message, "--allow-empty"], project)


def clone_project(src: Path, dest: Path) -> Path:
    """A copy of a built project (git history, DVC cache and outputs included)."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def use_synthetic_corpus(project: Path, n_train: int = 400, n_eval: int = 60) -> None:
    """Replace a tiny project's corpus with conftest's word-for-word synthetic pairs, which a
    tiny model learns within seconds (test BLEU well above 0, so runs differ), and commit.
    Their vocabulary is small: tokenizer.vocab_size becomes 100."""
    from .conftest import synthetic_pairs

    for seed, (split, n) in enumerate((("train", n_train), ("val", n_eval), ("test", n_eval))):
        pairs = synthetic_pairs(n, seed)
        for lang, column in (("de", 0), ("en", 1)):
            (project / "corpus" / f"{split}.{lang}").write_text(
                "".join(pair[column] + "\n" for pair in pairs), encoding="utf-8")
    write_params(project, {"tokenizer": {"vocab_size": 100}})
    commit_all(project, "synthetic corpus")


def read_at(project: Path, path: str, rev: str) -> str:
    """A file as DVC stored it at a commit or experiment (its cached output), not the workspace."""
    import dvc.api

    return dvc.api.read(path, repo=str(project), rev=rev, encoding="utf-8")
