"""Shared fixtures: a small Multi30k excerpt (committed) and a fake mirror made of it, the
real Multi30k mirror, a tiny synthetic corpus. No test skips for want of ../shared: only the
tests of the real files use them, and those download them when there is no mirror."""
from __future__ import annotations

import gzip
import hashlib
import os
import random
from pathlib import Path

import pytest

from tests.e2e import MIRROR as MULTI30K_MIRROR, MULTI30K_FIXTURE

# (German, English) pieces of the synthetic corpus: word for word, so it stays aligned.
_ADJECTIVES = [("große", "big"), ("kleine", "small"), ("grüne", "green"), ("weiße", "white"),
               ("schöne", "beautiful"), ("müde", "tired"), ("junge", "young"), ("alte", "old")]
_NOUNS = [("Hund", "dog"), ("Katze", "cat"), ("Mann", "man"), ("Frau", "woman"),
          ("Junge", "boy"), ("Mädchen", "girl"), ("Vogel", "bird"), ("Radfahrer", "cyclist"),
          ("Straßenmusiker", "street musician"), ("Fußballspieler", "football player")]
_VERBS = [("läuft", "runs"), ("spielt", "plays"), ("schläft", "sleeps"), ("springt", "jumps"),
          ("sitzt", "sits"), ("wartet", "waits"), ("lächelt", "smiles")]
_PLACES = [("im Park", "in the park"), ("auf der Straße", "on the street"),
           ("über die Brücke", "over the bridge"), ("am Strand", "on the beach"),
           ("vor dem Haus", "in front of the house"), ("", "")]


def synthetic_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """n aligned German-like/English-like sentence pairs, the same for the same seed."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        (adj_de, adj_en), (noun_de, noun_en) = rng.choice(_ADJECTIVES), rng.choice(_NOUNS)
        (verb_de, verb_en), (place_de, place_en) = rng.choice(_VERBS), rng.choice(_PLACES)
        de = " ".join(filter(None, ["Der", adj_de, noun_de, verb_de, place_de])) + "."
        en = " ".join(filter(None, ["The", adj_en, noun_en, verb_en, place_en])) + "."
        pairs.append((de, en))
    return pairs


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and do not crawl when other jobs share the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_pairs() -> list[tuple[str, str]]:
    """300 synthetic (German-like, English-like) training pairs."""
    return synthetic_pairs(300, seed=0)


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> dict[str, Path]:
    """A small de-en corpus (300 train, 40 val, 40 test pairs) under tmp_path/project/corpus
    (data.files must lie in the project's corpus/ folder); keys as in params data.files
    (train_src, ..., test_tgt)."""
    folder = tmp_path / "project" / "corpus"
    folder.mkdir(parents=True)
    files = {}
    for seed, (split, n) in enumerate((("train", 300), ("val", 40), ("test", 40))):
        pairs = synthetic_pairs(n, seed)
        for side, lang, column in (("src", "de", 0), ("tgt", "en", 1)):
            path = folder / f"{split}.{lang}"
            path.write_text("".join(pair[column] + "\n" for pair in pairs), encoding="utf-8")
            files[f"{split}_{side}"] = path
    return files


@pytest.fixture
def multi30k_mirror() -> Path | None:
    """The real Multi30k mirror ($NMT_DATA_MIRROR, else ../shared/data/multi30k), or None when
    there is none: the test then downloads the files from GitHub, and fails (never skips)
    without internet."""
    return MULTI30K_MIRROR if MULTI30K_MIRROR.is_dir() else None


@pytest.fixture
def fake_multi30k_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A mirror folder with Multi30k's six file names, gzipped from the committed excerpt
    (tests/fixtures/multi30k), and nmt.corpus's pinned sha256 set to these files for the
    test: the mirror, download and checksum code without the real files."""
    import nmt.corpus as corpus

    mirror = tmp_path / "fake-multi30k"
    mirror.mkdir()
    pins = {}
    for split, stem in corpus.MULTI30K_STEMS.items():
        for lang in corpus.MULTI30K_LANGS:
            name = f"{stem}.{lang}.gz"
            data = gzip.compress((MULTI30K_FIXTURE / f"{split}.{lang}").read_bytes(), mtime=0)
            (mirror / name).write_bytes(data)
            pins[name] = hashlib.sha256(data).hexdigest()
    monkeypatch.setattr(corpus, "MULTI30K_SHA256", pins)
    return mirror


# --- CI: a skipped test is a failed one -------------------------------------------------------
# A green run must mean every test ran: with CI=true (as CI services set it) a skip, whatever
# its reason, fails the test, so a missing tool or folder cannot pass unnoticed.

def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def _fail_skip(report) -> None:
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which allows no skips: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_skip(outcome.get_result())


# The slowest test files, slowest first: `make test` hands whole files to its xdist workers in
# collection order (--dist loadfile), so these start at once and the many short files fill the
# other worker meanwhile, instead of one long file running alone at the end. Measured under
# `pytest --durations` (docs/testing.md); a file missing from the list just keeps its place.
# A worker is handed its next file when 2 of its tests are left, so the third file waits
# behind the catalogue test (8 minutes) on the first worker: a short one goes there.
SLOWEST_FIRST = ("test_hypotheses.py", "test_report.py", "test_plotting.py", "test_reruns.py",
                 "test_team.py", "test_pipeline.py", "test_models_e2e.py", "test_determinism.py",
                 "test_show.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within
