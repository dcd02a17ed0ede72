"""tokenizer: SentencePiece training (shared or per side), determinism, loading, encoding."""
from __future__ import annotations

from pathlib import Path

import pytest

from nmt.errors import UserError
from nmt.params import Tokenizer
from nmt.tokenizer import SpecialIds, Tokenizers, mean_length, sample, train_tokenizers


@pytest.fixture
def de_en(tiny_pairs: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """German-like and English-like training lines."""
    return [de for de, _ in tiny_pairs], [en for _, en in tiny_pairs]


def test_shared_model(de_en, tmp_path):
    de, en = de_en
    toks = train_tokenizers(Tokenizer(vocab_size=100), de, en, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spm.model", "spm.vocab"]
    assert toks.shared and toks.src is toks.tgt
    assert toks.src_vocab_size == toks.tgt_vocab_size == 100
    vocab = (tmp_path / "spm.vocab").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 100
    assert [line.split("\t")[0] for line in vocab[:4]] == ["<pad>", "<unk>", "<s>", "</s>"]


def test_separate_models(de_en, tmp_path):
    de, en = de_en
    toks = train_tokenizers(Tokenizer(vocab_size=200, model_type="bpe", shared=False), de, en, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "spm.src.model", "spm.src.vocab", "spm.tgt.model", "spm.tgt.vocab"]
    assert not toks.shared and toks.src is not toks.tgt
    assert toks.src_vocab_size == toks.tgt_vocab_size == 200
    assert "äuft" in "".join(toks.src.id_to_piece(i) for i in range(200))
    assert all("ä" not in toks.tgt.id_to_piece(i) for i in range(200))


def test_load_matches_training(de_en, tmp_path):
    de, en = de_en
    trained = train_tokenizers(Tokenizer(vocab_size=200, model_type="bpe", shared=False), de, en, tmp_path)
    loaded = Tokenizers.load(tmp_path)
    assert not loaded.shared
    assert loaded.encode_src(de[:5]) == trained.encode_src(de[:5])
    assert loaded.encode_tgt(en[:5]) == trained.encode_tgt(en[:5])


@pytest.mark.parametrize("model_type,vocab_size", [("unigram", 100), ("bpe", 300),
                                                    ("char", 60), ("word", 96)])
def test_ids_and_round_trip(de_en, tmp_path, model_type, vocab_size):
    de, en = de_en
    toks = train_tokenizers(Tokenizer(vocab_size=vocab_size, model_type=model_type), de, en, tmp_path)
    assert toks.special == SpecialIds(pad=0, bos=2, eos=3)
    assert toks.src.unk_id() == 1 and toks.src.pad_id() == 0
    ids = toks.encode_tgt(en[:20])
    assert all(seq and toks.special.bos not in seq and toks.special.eos not in seq for seq in ids)
    assert toks.decode_tgt(ids) == en[:20]
    assert toks.decode_tgt(toks.encode_src(de[:20])) == de[:20]  # shared: src pieces decode too
    special = toks.special
    assert toks.decode_tgt([[special.bos, *ids[0], special.eos, special.pad]]) == en[:1]
    assert toks.encode_src([]) == [] and toks.decode_tgt([]) == []


def test_training_is_deterministic(de_en, tmp_path):
    de, en = de_en
    for run in ("a", "b"):
        train_tokenizers(Tokenizer(vocab_size=100), de, en, tmp_path / run)
        train_tokenizers(Tokenizer(vocab_size=200, model_type="bpe", shared=False), de, en,
                         tmp_path / run / "separate")
    for path in sorted((tmp_path / "a").rglob("spm*")):
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()


def test_vocab_size_too_large_suggests_a_value(de_en, tmp_path):
    de, en = de_en
    with pytest.raises(UserError, match=r"tokenizer.vocab_size: 5000 is too large .* set it to \d+ or less"):
        train_tokenizers(Tokenizer(vocab_size=5000), de, en, tmp_path)
    assert not any(tmp_path.iterdir())


def test_vocab_size_too_small_suggests_a_value(de_en, tmp_path):
    de, en = de_en
    with pytest.raises(UserError, match=r"tokenizer.vocab_size: 16 is too small .* at least \d+"):
        train_tokenizers(Tokenizer(vocab_size=16), de, en, tmp_path)


def test_suggested_vocab_size_works(de_en, tmp_path):
    de, en = de_en
    with pytest.raises(UserError) as e:
        train_tokenizers(Tokenizer(vocab_size=5000), de, en, tmp_path / "a")
    suggested = int(str(e.value).split("set it to ")[1].split()[0])
    toks = train_tokenizers(Tokenizer(vocab_size=suggested), de, en, tmp_path / "b")
    assert toks.src_vocab_size == suggested


def test_load_without_model_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="no SentencePiece model"):
        Tokenizers.load(tmp_path)



def test_a_corpus_over_the_cap_is_sampled_seeded_in_corpus_order(caplog):
    lines = [f"sentence {i}" for i in range(1000)]
    with caplog.at_level("INFO", logger="nmt"):
        drawn = sample(lines, 100, "shared")
    assert len(drawn) == 100 and drawn == sample(lines, 100, "shared")
    assert drawn == sorted(drawn, key=lambda line: int(line.split()[1]))  # corpus order
    assert "learns from 100 of 1000 sentences (tokenizer.input_sentence_size" in caplog.text
    assert sample(lines, 1000, "shared") is lines and sample(lines, 0, "shared") is lines


def test_under_the_cap_the_model_is_the_unsampled_one(de_en, tmp_path):
    """The cap only ever samples a corpus larger than it: below it (Multi30k's 58,000
    sentences under the default million), the model is byte for byte the uncapped one."""
    de, en = de_en
    for name, size in (("capped", 600), ("all", 0), ("sampled", 500)):
        train_tokenizers(Tokenizer(vocab_size=100, input_sentence_size=size), de, en,
                         tmp_path / name)
    model = {name: (tmp_path / name / "spm.model").read_bytes()
             for name in ("capped", "all", "sampled")}
    assert model["capped"] == model["all"] != model["sampled"]


def test_mean_length_a_chunk_at_a_time(de_en, tmp_path, monkeypatch):
    de, en = de_en
    toks = train_tokenizers(Tokenizer(vocab_size=100), de, en, tmp_path)
    monkeypatch.setattr("nmt.tokenizer.MEAN_CHUNK", 7)
    ids = toks.encode_src(de)
    assert mean_length(toks.encode_src, de) == round(sum(map(len, ids)) / len(ids), 2)
