"""Shared fixtures: the Multi30k mirror, a tiny synthetic corpus."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.e2e import MIRROR as MULTI30K_MIRROR

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
def multi30k_mirror() -> Path:
    """The offline Multi30k mirror beside the repository (../shared/data/multi30k)."""
    if not MULTI30K_MIRROR.is_dir():
        pytest.skip(f"no Multi30k mirror at {MULTI30K_MIRROR}")
    return MULTI30K_MIRROR
