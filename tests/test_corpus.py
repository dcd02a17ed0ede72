"""corpus: Multi30k fetching and checking, user files, normalisation, training filter."""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import shutil
import threading
from pathlib import Path

import pytest

import nmt.corpus as corpus
from nmt.errors import UserError
from nmt.params import CorpusFiles, Data


def files_data(files: dict[str, Path], **overrides: object) -> Data:
    """data params for a user corpus; `overrides` replace data.files entries."""
    paths = {key: str(path) for key, path in files.items()} | overrides
    return Data(corpus="files", files=CorpusFiles(**paths))


@pytest.fixture
def mirror_env(monkeypatch: pytest.MonkeyPatch, fake_multi30k_mirror: Path) -> Path:
    """$NMT_DATA_MIRROR set to conftest's fake mirror (the committed Multi30k excerpt)."""
    monkeypatch.setenv(corpus.MIRROR_ENV, str(fake_multi30k_mirror))
    return fake_multi30k_mirror


# --- normalisation and filtering ---------------------------------------------

def test_normalise_nfc_and_whitespace():
    decomposed = "Ma\u0308dchen"  # 'a' + combining diaeresis
    assert corpus.normalise(f"  {decomposed}\tläuft\u00a0 \u2028schnell.  ") == "Mädchen läuft schnell."
    assert corpus.normalise(" \t ") == ""


def test_filter_train_drops_and_counts_by_reason():
    src = ["ein Hund", "", "wort " * 10_000, "a b c d e f g h i j", "ein Mann", "zwei"]
    tgt = ["a dog", "a cat", "word", "x", "a man", ""]
    kept_src, kept_tgt, dropped = corpus.filter_train(src, tgt, max_words=100, max_length_ratio=9.0)
    assert kept_src == ["ein Hund", "ein Mann"]
    assert kept_tgt == ["a dog", "a man"]
    assert dropped == {"empty": 2, "too_long": 1, "length_ratio": 1}


def test_filter_train_keeping_nothing_is_an_error():
    with pytest.raises(UserError, match="all 1 training pairs were dropped"):
        corpus.filter_train([""], ["x"], max_words=100, max_length_ratio=9.0)


# --- user files --------------------------------------------------------------

def test_read_files(tiny_corpus):
    loaded = corpus.load_corpus(files_data(tiny_corpus))
    assert loaded.name == "files"
    assert {k: len(s.src) for k, s in loaded.splits.items()} == {"train": 300, "val": 40, "test": 40}
    assert loaded.splits["test"].tgt is not None
    assert loaded.splits["train"].src[0].startswith("Der ")
    assert loaded.splits["train"].tgt[0].startswith("The ")


def test_no_test_reference(tiny_corpus):
    loaded = corpus.load_corpus(files_data(tiny_corpus, test_tgt=""))
    assert loaded.splits["test"].tgt is None
    assert len(loaded.splits["test"].src) == 40


def test_crlf_bom_and_blank_lines_read_and_normalised(tiny_corpus):
    tiny_corpus["val_src"].write_bytes("\ufeffein  Hund\r\n\r\nzwei\tKatzen \r\n".encode())
    tiny_corpus["val_tgt"].write_bytes(b"a dog\r\n\r\ntwo cats\r\n")
    loaded = corpus.normalise_corpus(corpus.load_corpus(files_data(tiny_corpus)))
    assert loaded.splits["val"].src == ["ein Hund", "", "zwei Katzen"]
    assert loaded.splits["val"].tgt == ["a dog", "", "two cats"]


def test_misaligned_files_name_both_and_counts(tiny_corpus):
    lines = tiny_corpus["val_tgt"].read_text(encoding="utf-8").splitlines()
    tiny_corpus["val_tgt"].write_text("\n".join(lines[:-3]) + "\n", encoding="utf-8")
    with pytest.raises(UserError) as e:
        corpus.load_corpus(files_data(tiny_corpus))
    message = str(e.value)
    assert str(tiny_corpus["val_src"]) in message and "40" in message
    assert str(tiny_corpus["val_tgt"]) in message and "37" in message


def test_non_utf8_names_the_file(tiny_corpus):
    tiny_corpus["test_src"].write_bytes(b"ein Hund\nStra\xdfe\n")
    with pytest.raises(UserError, match=f"{tiny_corpus['test_src']}: not valid UTF-8 \\(line 2"):
        corpus.load_corpus(files_data(tiny_corpus))


def test_empty_file_names_the_file(tiny_corpus):
    tiny_corpus["train_tgt"].write_bytes(b"")
    with pytest.raises(UserError, match=f"{tiny_corpus['train_tgt']}: empty file"):
        corpus.load_corpus(files_data(tiny_corpus))


def test_missing_file_names_key_and_path(tiny_corpus, tmp_path):
    missing = tmp_path / "nowhere.de"
    with pytest.raises(UserError, match=f"data.files.val_src: file not found: {missing}"):
        corpus.load_corpus(files_data(tiny_corpus, val_src=str(missing)))


# --- Multi30k ----------------------------------------------------------------

@pytest.mark.e2e
def test_the_real_multi30k_matches_its_pinned_checksums(multi30k_mirror, tmp_path, monkeypatch):
    """The real files: from the mirror when there is one, else downloaded (no skip)."""
    if multi30k_mirror is None:
        monkeypatch.delenv(corpus.MIRROR_ENV, raising=False)
    else:
        monkeypatch.setenv(corpus.MIRROR_ENV, str(multi30k_mirror))
    raw = tmp_path / "raw"
    loaded = corpus.load_corpus(Data(), raw)
    assert sorted(p.name for p in raw.iterdir()) == sorted(corpus.MULTI30K_SHA256)
    assert {k: len(s.src) for k, s in loaded.splits.items()} == {"train": 29000, "val": 1014, "test": 1000}
    assert loaded.splits["train"].src[0].startswith("Zwei junge weiße Männer")


def test_multi30k_from_mirror(mirror_env, tmp_path):
    raw = tmp_path / "raw"
    loaded = corpus.load_corpus(Data(), raw)
    assert sorted(p.name for p in raw.iterdir()) == sorted(corpus.MULTI30K_SHA256)
    assert {k: len(s.src) for k, s in loaded.splits.items()} == {"train": 800, "val": 60, "test": 60}
    assert loaded.splits["train"].src[0].startswith("Zwei junge weiße Männer")
    assert loaded.splits["train"].tgt[0].startswith("Two young, White males")


def test_an_earlier_runs_data_raw_serves_as_the_mirror(mirror_env, tmp_path, monkeypatch):
    """What the README tells a user without internet: NMT_DATA_MIRROR=<earlier clone>/data/raw."""
    earlier = tmp_path / "earlier" / "data" / "raw"
    first = corpus.load_corpus(Data(), earlier)
    monkeypatch.setenv(corpus.MIRROR_ENV, str(earlier))
    again = corpus.load_corpus(Data(), tmp_path / "fresh" / "data" / "raw")
    assert again.splits == first.splits


def test_multi30k_en_de_swaps_sides(mirror_env, tmp_path):
    loaded = corpus.load_corpus(Data(src_lang="en", tgt_lang="de"), tmp_path / "raw")
    assert (loaded.src_lang, loaded.tgt_lang) == ("en", "de")
    assert loaded.splits["test"].src[0].startswith("A man in an orange hat")
    assert loaded.splits["test"].tgt[0].startswith("Ein Mann mit einem orangefarbenen Hut")


def test_multi30k_rejects_other_languages(mirror_env, tmp_path):
    with pytest.raises(UserError, match="data.tgt_lang: Multi30k task 1 has de and en, got 'fr'"):
        corpus.load_corpus(Data(tgt_lang="fr"), tmp_path / "raw")


def test_verified_files_are_not_fetched_again(mirror_env, tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    corpus.fetch_multi30k(raw)
    monkeypatch.setenv(corpus.MIRROR_ENV, str(tmp_path / "empty-mirror"))
    (tmp_path / "empty-mirror").mkdir()
    assert corpus.fetch_multi30k(raw)["val.de.gz"] == raw / "val.de.gz"


def test_wrong_cached_file_is_fetched_again(mirror_env, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "val.en.gz").write_bytes(b"half a file")
    corpus.fetch_multi30k(raw)
    assert (raw / "val.en.gz").read_bytes() == (mirror_env / "val.en.gz").read_bytes()


def test_relative_mirror_path(fake_multi30k_mirror, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(fake_multi30k_mirror, "mirror")
    monkeypatch.setenv(corpus.MIRROR_ENV, "mirror")
    corpus.fetch_multi30k(Path("data/raw"))
    assert len(list(Path("data/raw").iterdir())) == 6


def test_checksum_mismatch_names_file_and_hashes(fake_multi30k_mirror, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    shutil.copytree(fake_multi30k_mirror, mirror)
    bad = mirror / "val.de.gz"
    bad.chmod(0o644)
    bad.write_bytes(gzip.compress(b"Ein Hund.\n"))
    monkeypatch.setenv(corpus.MIRROR_ENV, str(mirror))
    raw = tmp_path / "raw"
    with pytest.raises(UserError) as e:
        corpus.fetch_multi30k(raw)
    message = str(e.value)
    assert str(bad) in message and corpus.MULTI30K_SHA256["val.de.gz"] in message
    assert hashlib.sha256(bad.read_bytes()).hexdigest() in message
    assert sorted(p.name for p in raw.iterdir()) == ["train.de.gz", "train.en.gz"]  # no half file


def test_missing_mirror_file_names_path(fake_multi30k_mirror, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    shutil.copytree(fake_multi30k_mirror, mirror)
    (mirror / "test_2016_flickr.en.gz").unlink()
    monkeypatch.setenv(corpus.MIRROR_ENV, str(mirror))
    with pytest.raises(UserError, match=f"{mirror / 'test_2016_flickr.en.gz'}: file not found"):
        corpus.fetch_multi30k(tmp_path / "raw")


def test_download_failure_suggests_mirror(tmp_path, monkeypatch):
    monkeypatch.delenv(corpus.MIRROR_ENV, raising=False)
    monkeypatch.setattr(corpus, "MULTI30K_URL", "http://127.0.0.1:9/{name}")  # nothing listens
    with pytest.raises(UserError, match=f"download failed.*set {corpus.MIRROR_ENV}"):
        corpus.fetch_multi30k(tmp_path / "raw")
    assert not list((tmp_path / "raw").glob("*"))


def test_download_from_url(fake_multi30k_mirror, tmp_path, monkeypatch):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(fake_multi30k_mirror))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        monkeypatch.delenv(corpus.MIRROR_ENV, raising=False)
        monkeypatch.setattr(corpus, "MULTI30K_URL", f"http://127.0.0.1:{server.server_port}/{{name}}")
        try:
            corpus.fetch_multi30k(tmp_path / "raw")
        finally:
            server.shutdown()
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(corpus.MULTI30K_SHA256)
