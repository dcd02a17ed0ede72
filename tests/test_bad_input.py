"""Bad input, all of it: one table of cases, each run as DVC runs it (`python -m stages.<name>`
in a project folder), as in the README's "Bad input and crashes" table.

A few cases are not errors and are handled as documented (CRLF, a 10,000-token
sentence, a test set without reference). Every other case must exit 2 with one
line "error: ..." naming the file or key, no traceback, and leave data/ and
reports/ as they were: no file changed, none added (no '.tmp-' or '.old-' leftovers).

The read-only folder and the full disk are real, not mocked: the stage runs in
its own mount namespace (`unshare --mount` as root, where chmod would stop no one;
`unshare --map-root-user --mount` for other users) over a read-only bind mount of
data/, or over a copy of data/ on a tmpfs filled to the last byte; the mounts end
with the process. Where neither may mount, those cases are skipped.
"""
from __future__ import annotations

import copy
import functools
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from . import e2e
from .conftest import synthetic_pairs

# Every case runs real stages on a project built by all seven: end to end, not a unit test.
pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d nmt[\w.]*: ")
STAGES = ("prepare", "subsample", "train", "swa_average", "translate", "bleu", "plots")
# The e2e tiny project, smaller still: 2 epochs, a 100-piece vocabulary.
TINY = e2e.deep_update(copy.deepcopy(e2e.TINY), {
    "tokenizer": {"vocab_size": 100},
    "train": {"epochs": 2, "batch_tokens": 1000},
    "swa": {"last_epochs": 2},
    "plots": {"dpi": 40},
})

# The stage runs as "$@" after the script has set up its private mounts.
READ_ONLY = 'mount --bind data data && mount -o remount,bind,ro data && exec "$@"'
DISK_FULL = """set -e
mkdir .full && mount -t tmpfs -o size=32m tmpfs .full && cp -a data/. .full/
mount --bind .full data
dd if=/dev/zero of=data/.filler bs=64k 2>/dev/null || true
set +e
"$@"; rc=$?
rm -f data/.filler
find data reports -type f -exec sha256sum {} + > .after 2>/dev/null
exit $rc"""


# --- the table -----------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    setup: Callable[[Path], dict | None]  # spoils the project; may return extra env variables
    stages: tuple[str, ...]  # run in order; an error case runs one
    error: tuple[str, ...] = ()  # substrings of the one error line; () = must succeed
    check: Callable[[Path, dict, str], None] | None = None  # success: (project, before, stderr)
    mounts: str = ""  # READ_ONLY or DISK_FULL: run inside a private mount namespace


def set_params(**groups: dict) -> Callable[[Path], None]:
    return lambda project: e2e.write_params(project, groups)


def rewrite_corpus(transform: Callable[[str, bytes], bytes]) -> Callable[[Path], None]:
    def setup(project: Path) -> None:
        for f in sorted((project / "corpus").iterdir()):
            f.write_bytes(transform(f.name, f.read_bytes()))
    return setup


def append_long_pair(project: Path) -> None:
    with open(project / "corpus/train.de", "a", encoding="utf-8") as f:
        f.write("Wort " * 10_000 + "\n")
    with open(project / "corpus/train.en", "a", encoding="utf-8") as f:
        f.write("word\n")


def no_test_reference(project: Path) -> None:
    e2e.write_params(project, {"data": {"files": {"test_tgt": ""}}})
    (project / "corpus/test.en").unlink()


def spoiled_mirror(project: Path) -> dict:
    """A mirror folder whose first file (the first one prepare copies) has other bytes."""
    mirror = project / "mirror"
    mirror.mkdir()
    (mirror / "train.de.gz").write_bytes(gzip.compress(b"Ein Mann.\n"))
    e2e.write_params(project, {"data": {"corpus": "multi30k"}})
    return {"NMT_DATA_MIRROR": str(mirror)}


def flip_byte(rel: str) -> Callable[[Path], None]:
    def setup(project: Path) -> None:
        data = bytearray((project / rel).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (project / rel).write_bytes(bytes(data))
    return setup


def keep_lines(rel: str, n: int) -> Callable[[Path], None]:
    def setup(project: Path) -> None:
        lines = (project / rel).read_text(encoding="utf-8").splitlines(keepends=True)
        (project / rel).write_text("".join(lines[:n]), encoding="utf-8")
    return setup


def cut_bytes(rel: str, keep: int) -> Callable[[Path], None]:
    """The file as a kill mid-copy (or a full disk, outside the atomic writes) leaves it."""
    def setup(project: Path) -> None:
        (project / rel).write_bytes((project / rel).read_bytes()[:keep])
    return setup


def replace_text(rel: str, old: str, new: str) -> Callable[[Path], None]:
    def setup(project: Path) -> None:
        text = (project / rel).read_text(encoding="utf-8")
        assert old in text, text
        (project / rel).write_text(text.replace(old, new, 1), encoding="utf-8")
    return setup


def leave_leftovers(project: Path) -> None:
    """What kills mid-write leave: temporary files and folders beside the outputs."""
    (project / "data/.tmp-model.k1l2").mkdir()
    (project / "data/.tmp-model.k1l2/averaged.pt").write_bytes(b"half")
    (project / "data/.old-model.4242").mkdir()


def check_swept(project: Path, before: dict, stderr: str) -> None:
    assert not (project / "data/.tmp-model.k1l2").exists()
    assert not (project / "data/.old-model.4242").exists()


def remove(rel: str) -> Callable[[Path], None]:
    return lambda project: shutil.rmtree(project / rel)


def nothing(project: Path) -> None:
    pass


def check_crlf(project: Path, before: dict, stderr: str) -> None:
    """CRLF is normalised: the prepared text equals the LF corpus's, byte for byte."""
    after = snapshot(project)
    for name in ("train.src", "train.tgt", "val.src", "val.tgt", "test.src", "test.tgt"):
        key = f"data/prepared/{name}"
        assert b"\r" not in (project / key).read_bytes() and after[key] == before[key], name


def check_long_sentence(project: Path, before: dict, stderr: str) -> None:
    stats = json.loads((project / "data/prepared/stats.json").read_text())
    assert stats["train_read"] == 301 and stats["sentences"]["train"] == 300
    assert stats["dropped"]["too_long"] == 1
    assert "Wort Wort" not in (project / "data/prepared/train.src").read_text()
    assert "too_long 1" in stderr


def check_no_reference(project: Path, before: dict, stderr: str) -> None:
    assert not (project / "data/prepared/test.tgt").exists()
    hyps = (project / "data/translations/test.hyp").read_text(encoding="utf-8").splitlines()
    assert len(hyps) == 40
    bleu = json.loads((project / "data/bleu/metrics.json").read_text())
    assert bleu["test"] == {"skipped": "no reference"} and "bleu" in bleu["val"]
    assert "test: no reference translation" in stderr and "test BLEU skipped" in stderr


CASES = [
    # Not errors: handled as documented.
    Case("crlf_line_endings", rewrite_corpus(lambda _, b: b.replace(b"\n", b"\r\n")),
         ("prepare",), check=check_crlf),
    Case("sentence_of_10000_tokens", append_long_pair, ("prepare",), check=check_long_sentence),
    Case("leftovers_of_a_kill", leave_leftovers, ("swa_average",), check=check_swept),
    Case("test_without_reference", no_test_reference, ("prepare", "translate", "bleu"),
         check=check_no_reference),
    # Bad files.
    Case("missing_file", set_params(data={"files": {"val_src": "corpus/nope.de"}}),
         ("prepare",), error=("data.files.val_src", "corpus/nope.de", "not found")),
    Case("misaligned_corpus", keep_lines("corpus/train.en", 299), ("prepare",),
         error=("corpus/train.de has 300 lines", "corpus/train.en has 299")),
    Case("misaligned_hypotheses", keep_lines("data/translations/test.hyp", 10), ("bleu",),
         error=("data/translations/test.hyp", "10 lines", "data/prepared/test.tgt")),
    Case("empty_corpus", rewrite_corpus(lambda n, b: b"" if n.startswith("train") else b),
         ("prepare",), error=("corpus/train.de", "empty file", "data.files.train_src")),
    Case("non_utf8_bytes", rewrite_corpus(lambda n, b: b"Stra\xdfe\n" + b if n == "val.de" else b),
         ("prepare",), error=("corpus/val.de", "not valid UTF-8", "line 1")),
    Case("empty_training_log", keep_lines("data/train/log/epochs.tsv", 1), ("plots",),
         error=("data/train/log", "empty")),
    Case("missing_model", remove("data/model"), ("translate",),
         error=("data/model/averaged.pt", "not found")),
    # Damaged intermediates (a kill or a disk error outside the atomic writes).
    Case("truncated_checkpoint", cut_bytes("data/train/checkpoints/epoch_002.pt", 5000),
         ("swa_average",), error=("data/train/checkpoints/epoch_002.pt", "corrupt", "truncated")),
    Case("truncated_train_metrics", cut_bytes("data/train/metrics.json", 20), ("swa_average",),
         error=("data/train/metrics.json", "not valid JSON")),
    Case("non_numeric_epoch_log", replace_text("data/train/log/epochs.tsv", "\n1\t", "\n1x\t"),
         ("plots",), error=("data/train/log/epochs.tsv", "line 2", "'1x' is not a number")),
    Case("corrupt_sentencepiece_model", cut_bytes("data/prepared/spm.model", 100), ("train",),
         error=("data/prepared/spm.model", "not a readable SentencePiece model")),
    # Bad params: every stage validates the whole file.
    Case("unknown_params_key", set_params(model={"d_modle": 64}), ("subsample",),
         error=("model.d_modle", "unknown params key", "did you mean 'model.d_model'")),
    Case("wrong_type", set_params(train={"epochs": "ten"}), ("swa_average",),
         error=("train.epochs", "expected an integer", "'ten'")),
    Case("d_model_not_divisible_by_nhead", set_params(model={"d_model": 30, "nhead": 4}),
         ("train",), error=("model.d_model", "not divisible", "model.nhead")),
    Case("unknown_activation", set_params(model={"activation": "tanh"}), ("train",),
         error=("model.activation", "'tanh'", "relu, gelu, swiglu")),
    Case("beam_size_0", set_params(translate={"beam_size": 0}), ("translate",),
         error=("translate.beam_size", "must be positive")),
    Case("swa_window_over_kept", set_params(swa={"last_epochs": 3}), ("swa_average",),
         error=("swa.last_epochs", "train.keep_checkpoints")),
    Case("negative_lr", set_params(optim={"lr": -0.001}), ("train",),
         error=("optim.lr", "must be positive")),
    Case("label_smoothing_1", set_params(loss={"label_smoothing": 1.0}), ("train",),
         error=("loss.label_smoothing", "[0.0, 1.0)")),
    Case("accum_steps_0", set_params(train={"accum_steps": 0}), ("train",),
         error=("train.accum_steps", "at least 1")),
    Case("warmup_longer_than_training", set_params(schedule={"warmup_steps": 10_000}),
         ("train",), error=("schedule.warmup_steps", "longer than training")),
    # Checksums.
    Case("download_checksum_mismatch", spoiled_mirror, ("prepare",),
         error=("mirror/train.de.gz", "sha256 mismatch")),
    Case("checkpoint_checksum_mismatch", flip_byte("data/train/checkpoints/epoch_002.pt"),
         ("swa_average",), error=("data/train/checkpoints/epoch_002.pt", "corrupt")),
    # The file system.
    Case("read_only_output_folder", nothing, ("translate",), mounts=READ_ONLY,
         error=("data/translations", "Read-only file system")),
    Case("disk_full_checkpoint", nothing, ("swa_average",), mounts=DISK_FULL,
         error=("no space left on device", "data/model/averaged.pt")),
    Case("disk_full_metrics", nothing, ("bleu",), mounts=DISK_FULL,
         error=("no space left on device", "data/bleu/metrics.json")),
]


# --- running ---------------------------------------------------------------------------------

def stage_env(extra: dict | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NMT_DATA_MIRROR"}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    env.update(extra or {})
    return env


def run_stage(project: Path, stage: str, env: dict | None = None,
              mounts: str = "") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", f"stages.{stage}"]
    if mounts:
        cmd = [*private_mounts(), "sh", "-c", mounts, "sh", *cmd]
    return subprocess.run(cmd, cwd=project, env=stage_env(env), capture_output=True, text=True,
                          timeout=300)


@functools.cache
def private_mounts() -> tuple[str, ...]:
    """The command that runs a process with mounts of its own: plain `unshare --mount` for
    root, a user namespace for others; () when neither may mount a tmpfs here."""
    candidates = [("unshare", "--map-root-user", "--mount")]
    if os.geteuid() == 0:
        candidates.insert(0, ("unshare", "--mount"))
    with tempfile.TemporaryDirectory() as folder:
        for cmd in candidates:
            try:
                probe = subprocess.run([*cmd, "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs",
                                        folder], capture_output=True)
            except FileNotFoundError:
                return ()
            if probe.returncode == 0:
                return cmd
    return ()


def snapshot(project: Path) -> dict[str, str]:
    """sha256 of every file under data/ and reports/, hidden ones included."""
    out = {}
    for top in ("data", "reports"):
        for f in sorted((project / top).rglob("*")):
            if f.is_file():
                out[str(f.relative_to(project))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def snapshot_inside(project: Path) -> dict[str, str]:
    """The snapshot the DISK_FULL script took inside its namespace (its tmpfs is gone now)."""
    out = {}
    for line in (project / ".after").read_text().splitlines():
        digest, name = line.split("  ", 1)
        out[name] = digest
    return out


def leftovers(project: Path) -> list[str]:
    return [str(p) for top in ("data", "reports") for p in (project / top).rglob("*")
            if p.name.startswith((".tmp-", ".old-"))]


def user_lines(stderr: str) -> list[str]:
    """What the user reads on stderr besides the log lines."""
    return [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny project (300 synthetic training pairs, 40 val, 40 test) after all seven stages."""
    project = tmp_path_factory.mktemp("bad-input") / "base"
    corpus = project / "corpus"
    corpus.mkdir(parents=True)
    for seed, (split, n) in enumerate((("train", 300), ("val", 40), ("test", 40))):
        pairs = synthetic_pairs(n, seed)
        for lang, column in (("de", 0), ("en", 1)):
            (corpus / f"{split}.{lang}").write_text("".join(p[column] + "\n" for p in pairs),
                                                   encoding="utf-8")
    params = e2e.deep_update(yaml.safe_load((REPO / "params.yaml").read_text()),
                             yaml.safe_load(yaml.safe_dump(TINY)))
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # train fingerprints its code as dvc.yaml lists it, relative to the project
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    for name in ("nmt", "stages"):
        shutil.copytree(REPO / name, project / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for stage in STAGES:
        result = run_stage(project, stage)
        assert result.returncode == 0, f"{stage}:\n{result.stderr[-3000:]}"
    return project


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_bad_input(case: Case, base: Path, tmp_path: Path) -> None:
    if case.mounts and not private_mounts():
        pytest.skip("needs `unshare --mount` (root) or user namespaces to mount a tmpfs")
    project = shutil.copytree(base, tmp_path / "project", symlinks=True)
    env = case.setup(project)
    before = snapshot(project)

    for stage in case.stages:
        result = run_stage(project, stage, env, case.mounts)
        if result.returncode != 0:
            break

    assert "Traceback" not in result.stderr, result.stderr
    if not case.error:
        assert result.returncode == 0, f"{stage}:\n{result.stderr[-3000:]}"
        assert user_lines(result.stderr) == [], result.stderr
        case.check(project, before, result.stderr)
        return
    assert result.returncode == 2, result.stderr
    lines = user_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stderr.rstrip("\n").splitlines()[-1] == lines[0]
    for part in case.error:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    after = snapshot_inside(project) if case.mounts == DISK_FULL else snapshot(project)
    assert after == before, "data/ or reports/ changed"
    assert leftovers(project) == []
