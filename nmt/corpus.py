"""Getting and checking the parallel corpus: Multi30k task 1 or the user's own files.

Multi30k comes from GitHub or, when $NMT_DATA_MIRROR names a folder, from a
local copy; either way each file must match its pinned sha256 before it is
stored in data/raw/, and a file already there with the right hash is reused.

Every file of every split is read and checked (exists, UTF-8, not empty,
aligned with its pair) before the caller writes anything.

Normalisation, the same for all splits so hypotheses and references meet in
one form: Unicode NFC, runs of whitespace (no-break space included) collapsed
to one space, ends stripped. NFC only merges canonically equivalent code
points, so text looks the same; NFKC would also rewrite e.g. '…' as '...' and
so change the BLEU references.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import logging
import os
import unicodedata
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from . import fsio, paths
from .errors import UserError
from .params import Data

log = logging.getLogger("nmt")

MULTI30K_URL = "https://github.com/multi30k/dataset/raw/master/data/task1/raw/{name}"
MIRROR_ENV = "NMT_DATA_MIRROR"
DOWNLOAD_TIMEOUT_S = 60
MULTI30K_LANGS = ("de", "en")
MULTI30K_STEMS = {"train": "train", "val": "val", "test": "test_2016_flickr"}  # split -> file stem
MULTI30K_SHA256 = {
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
}
DROP_REASONS = ("empty", "too_long", "length_ratio")
_CHUNK = 1 << 16


@dataclass
class Split:
    """One split's aligned sentences; `tgt` is None when there is no reference (test only)."""

    src: list[str]
    tgt: list[str] | None


@dataclass
class Corpus:
    """The three splits, keyed train, val and test, with where they came from."""

    name: str
    src_lang: str
    tgt_lang: str
    splits: dict[str, Split]


def load_corpus(data: Data, raw_dir: Path = paths.RAW) -> Corpus:
    """Fetch or read the corpus that `data.corpus` names and check all of it."""
    if data.corpus == "multi30k":
        _check_multi30k_langs(data.src_lang, data.tgt_lang)  # before a download, not after
        return _read_multi30k(data.src_lang, data.tgt_lang, fetch_multi30k(raw_dir))
    return read_files(data)


def fetch_multi30k(raw_dir: Path = paths.RAW) -> dict[str, Path]:
    """Make sure `raw_dir` holds the six verified Multi30k files; return file name -> path."""
    mirror = os.environ.get(MIRROR_ENV)
    if mirror and not Path(mirror).is_dir():
        raise UserError(f"{MIRROR_ENV}={mirror}: folder not found")
    files = {}
    for name, sha256 in MULTI30K_SHA256.items():
        dest = raw_dir / name
        files[name] = dest
        if dest.is_file():
            if fsio.sha256_file(dest) == sha256:
                continue
            log.warning("%s: wrong sha256, fetching it again", dest)
        if mirror:
            _copy_from_mirror(Path(mirror) / name, dest, sha256)
        else:
            _download(MULTI30K_URL.format(name=name), dest, sha256)
    return files


def read_files(data: Data) -> Corpus:
    """Read the user's corpus named in `data.files`; test_tgt may be empty (no reference)."""
    lines = {}
    for key, path in dataclasses.asdict(data.files).items():
        if path:
            lines[key] = fsio.read_utf8_lines(path, f"data.files.{key}")
            if not lines[key]:
                raise UserError(f"{path}: empty file (data.files.{key})")
    splits = {}
    for split in paths.SPLITS:
        src_key, tgt_key = f"{split}_src", f"{split}_tgt"
        if tgt_key not in lines:
            splits[split] = Split(lines[src_key], None)
            continue
        splits[split] = _checked_split(split, getattr(data.files, src_key), lines[src_key],
                                       getattr(data.files, tgt_key), lines[tgt_key])
    return Corpus("files", data.src_lang, data.tgt_lang, splits)


def normalise(line: str) -> str:
    """NFC, whitespace runs to one space, stripped."""
    return " ".join(unicodedata.normalize("NFC", line).split())


def normalise_corpus(corpus: Corpus) -> Corpus:
    """Every line of every split normalised, in place (each line replaced as it goes, so a
    corpus of millions of lines is never held twice); line counts and order unchanged."""
    for split in corpus.splits.values():
        for lines in (split.src, split.tgt):
            for i, line in enumerate(lines or ()):
                lines[i] = normalise(line)
    return corpus


def filter_train(src: list[str], tgt: list[str], max_words: int,
                 max_length_ratio: float) -> tuple[list[str], list[str], dict[str, int]]:
    """Drop normalised training pairs with an empty side, a side over `max_words` words,
    or a word-count ratio over `max_length_ratio`; return kept src, kept tgt, drops per reason."""
    kept_src, kept_tgt = [], []
    dropped = dict.fromkeys(DROP_REASONS, 0)
    for s, t in zip(src, tgt, strict=True):
        reason = _drop_reason(len(s.split()), len(t.split()), max_words, max_length_ratio)
        if reason:
            dropped[reason] += 1
        else:
            kept_src.append(s)
            kept_tgt.append(t)
    if not kept_src:
        raise UserError(
            f"data: all {len(src)} training pairs were dropped "
            f"({', '.join(f'{k}: {v}' for k, v in dropped.items())}); "
            "check the training files, data.max_words and data.max_length_ratio")
    return kept_src, kept_tgt, dropped


def _check_multi30k_langs(src_lang: str, tgt_lang: str) -> None:
    for key, lang in (("data.src_lang", src_lang), ("data.tgt_lang", tgt_lang)):
        if lang not in MULTI30K_LANGS:
            raise UserError(f"{key}: Multi30k task 1 has {' and '.join(MULTI30K_LANGS)}, got {lang!r}")
    if src_lang == tgt_lang:
        raise UserError(f"data.tgt_lang: same as data.src_lang ({src_lang!r})")


def _read_multi30k(src_lang: str, tgt_lang: str, files: dict[str, Path]) -> Corpus:
    splits = {}
    for split, stem in MULTI30K_STEMS.items():
        src_path, tgt_path = files[f"{stem}.{src_lang}.gz"], files[f"{stem}.{tgt_lang}.gz"]
        splits[split] = _checked_split(split, src_path, _read_gz_lines(src_path),
                                       tgt_path, _read_gz_lines(tgt_path))
    return Corpus("multi30k", src_lang, tgt_lang, splits)


def _drop_reason(src_words: int, tgt_words: int, max_words: int, max_ratio: float) -> str | None:
    if not src_words or not tgt_words:
        return "empty"
    if max(src_words, tgt_words) > max_words:
        return "too_long"
    if max(src_words, tgt_words) / min(src_words, tgt_words) > max_ratio:
        return "length_ratio"
    return None


def _checked_split(split: str, src_path: str | Path, src: list[str],
                   tgt_path: str | Path, tgt: list[str]) -> Split:
    if len(src) != len(tgt):
        raise UserError(
            f"{split} files are not aligned: {src_path} has {len(src)} lines, "
            f"{tgt_path} has {len(tgt)}")
    return Split(src, tgt)


def _read_gz_lines(path: Path) -> list[str]:
    # The sha256 check already pinned the bytes: known UTF-8 with '\n' line ends.
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _copy_from_mirror(src: Path, dest: Path, sha256: str) -> None:
    if not src.is_file():
        raise UserError(f"{src}: file not found in the {MIRROR_ENV} folder")
    log.info("copying %s", src)
    with open(src, "rb") as stream:
        _store_verified(stream, src.stat().st_size, str(src), dest, sha256)


def _download(url: str, dest: Path, sha256: str) -> None:
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            _store_verified(response, size, url, dest, sha256)
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(
            f"{url}: download failed ({reason}); without internet, set {MIRROR_ENV} to a "
            f"folder holding the Multi30k files (e.g. ../shared/data/multi30k)") from None


def _store_verified(stream: BinaryIO, size: int | None, source: str, dest: Path,
                    sha256: str) -> None:
    """Copy `stream` to `dest` through a temporary file that only becomes `dest` if the hash matches."""
    digest = hashlib.sha256()
    with fsio.atomic_path(dest) as tmp, open(tmp, "wb") as out, \
            tqdm(total=size, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            bar.update(len(chunk))
        if digest.hexdigest() != sha256:
            raise UserError(
                f"{source}: sha256 mismatch: expected {sha256}, got {digest.hexdigest()}")
