"""SentencePiece subword models: training (in prepare) and loading (in later stages).

One shared model (spm.model) sees both languages, or two models
(spm.src.model, spm.tgt.model) each see one; each comes with its .vocab.
Ids are fixed: pad 0, unk 1, bos 2, eos 3.

Training is deterministic: one thread (the learned pieces depend on the thread
count, so more threads would give a different model on a bigger machine), and
the input order is the corpus order. A model learns from at most
`tokenizer.input_sentence_size` sentences: on a bigger corpus, a sample drawn
with a fixed seed (SAMPLE_SEED), in corpus order, as is common practice
(SentencePiece's own option of that name; a million sentences is its authors'
suggestion). Below the cap every sentence is used, unsampled, so the model is
the one it was before the cap existed. `vocab_size` is a hard limit: a value the
training text cannot fill is a user error that names the largest workable
value, rather than a vocabulary silently smaller than params.yaml says.

Normalisation is `identity`: corpus.normalise already applied NFC and collapsed
whitespace, and SentencePiece's default NFKC would make decoded hypotheses
differ from the references (e.g. '…' decoded as '...').
"""
from __future__ import annotations

import io
import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from . import fsio, paths
from .errors import UserError
from .params import Tokenizer

log = logging.getLogger("nmt")

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SAMPLE_SEED = 1234  # the draw of the sentences SentencePiece learns from, when there are more
MEAN_CHUNK = 1 << 16  # sentences encoded at once to measure their mean length
SHARED_MODEL = "spm.model"
SRC_MODEL = "spm.src.model"
TGT_MODEL = "spm.tgt.model"

_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


@dataclass(frozen=True)
class SpecialIds:
    """The ids that frame every sequence: padding, and the beginning and end of a sentence."""

    pad: int = PAD_ID
    bos: int = BOS_ID
    eos: int = EOS_ID


class Tokenizers:
    """Source and target SentencePiece processors; one object for both when shared."""

    def __init__(self, src: spm.SentencePieceProcessor, tgt: spm.SentencePieceProcessor):
        self.src = src
        self.tgt = tgt
        self.shared = src is tgt
        self.special = SpecialIds()
        self.src_vocab_size: int = src.get_piece_size()
        self.tgt_vocab_size: int = tgt.get_piece_size()

    @classmethod
    def load(cls, prepared_dir: str | Path = paths.PREPARED) -> Tokenizers:
        """Load the model(s) that `train_tokenizers` wrote into `prepared_dir`."""
        prepared_dir = Path(prepared_dir)
        if (prepared_dir / SHARED_MODEL).is_file():
            shared = _load(prepared_dir / SHARED_MODEL)
            return cls(shared, shared)
        if (prepared_dir / SRC_MODEL).is_file() and (prepared_dir / TGT_MODEL).is_file():
            return cls(_load(prepared_dir / SRC_MODEL), _load(prepared_dir / TGT_MODEL))
        raise UserError(
            f"{prepared_dir}: no SentencePiece model ({SHARED_MODEL}, or {SRC_MODEL} and "
            f"{TGT_MODEL}); run the prepare stage first")

    def encode_src(self, lines: list[str]) -> list[list[int]]:
        """Source lines to piece ids, without bos/eos."""
        return self.src.encode(list(lines), out_type=int)

    def encode_tgt(self, lines: list[str]) -> list[list[int]]:
        """Target lines to piece ids, without bos/eos."""
        return self.tgt.encode(list(lines), out_type=int)

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        """Target piece ids to text; pad, bos and eos decode to nothing."""
        # One call per sentence: decode([]) reads an empty batch as one empty sentence.
        return [self.tgt.decode(seq) for seq in ids]


def train_tokenizers(tok: Tokenizer, src_lines: list[str], tgt_lines: list[str],
                     out_dir: str | Path) -> Tokenizers:
    """Train the model(s) `tok` asks for on normalised training text; write them and their
    .vocab into `out_dir` and return them loaded."""
    out_dir = Path(out_dir)
    if tok.shared:
        _save(_train(tok, sample(src_lines + tgt_lines, tok.input_sentence_size, "shared"),
                     "shared"), out_dir / SHARED_MODEL)
    else:
        _save(_train(tok, sample(src_lines, tok.input_sentence_size, "source"), "source"),
              out_dir / SRC_MODEL)
        _save(_train(tok, sample(tgt_lines, tok.input_sentence_size, "target"), "target"),
              out_dir / TGT_MODEL)
    return Tokenizers.load(out_dir)


def sample(lines: list[str], size: int, what: str) -> list[str]:
    """At most `size` of `lines` (0: no limit), drawn with SAMPLE_SEED and kept in corpus
    order; all of them, untouched, when there are no more than that."""
    if not size or len(lines) <= size:
        return lines
    log.info("SentencePiece (%s) learns from %d of %d sentences (tokenizer.input_sentence_size, "
             "seed %d)", what, size, len(lines), SAMPLE_SEED)
    return [lines[i] for i in sorted(random.Random(SAMPLE_SEED).sample(range(len(lines)), size))]


def mean_length(encode: Callable[[list[str]], list[list[int]]], lines: Sequence[str]) -> float:
    """Mean pieces per line, rounded to 2 decimals, encoding a chunk at a time (a corpus of
    millions of lines never exists as lists of ids at once)."""
    total = sum(len(ids) for i in range(0, len(lines), MEAN_CHUNK)
                for ids in encode(list(lines[i:i + MEAN_CHUNK])))
    return round(total / max(1, len(lines)), 2)


def _train(tok: Tokenizer, lines: list[str], what: str) -> bytes:
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            vocab_size=tok.vocab_size,
            model_type=tok.model_type,
            character_coverage=tok.character_coverage,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            normalization_rule_name="identity",
            num_threads=1,
            minloglevel=2,  # errors only: they come back as exceptions anyway
        )
    except RuntimeError as e:
        error = _vocab_size_error(str(e), what)
        if error is None:
            raise
        raise error from None
    return model.getvalue()


def _vocab_size_error(message: str, what: str) -> UserError | None:
    if m := _TOO_HIGH.search(message):
        return UserError(
            f"tokenizer.vocab_size: {m[1]} is too large for the {what} training text; "
            f"set it to {m[2]} or less")
    if m := _TOO_LOW.search(message):
        return UserError(
            f"tokenizer.vocab_size: {m[1]} is too small for the characters of the {what} "
            f"training text; set it to at least {m[2]}, or lower tokenizer.character_coverage")
    return None


def _save(model: bytes, path: Path) -> None:
    """Write the model and beside it the .vocab (piece, tab, score) that spm_train would write."""
    fsio.write_text(path.with_suffix(".vocab"), "".join(
        f"{piece}\t{score:g}\n" for piece, score in _pieces(model)))
    with fsio.atomic_path(path) as tmp:
        tmp.write_bytes(model)


def _pieces(model: bytes) -> list[tuple[str, float]]:
    sp = spm.SentencePieceProcessor(model_proto=model)
    return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]


def _load(path: Path) -> spm.SentencePieceProcessor:
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:  # a damaged file: spm says "could not parse ModelProto"
        reason = (str(e).strip().splitlines() or ["unreadable"])[0].replace(str(path), "the file")
        raise UserError(f"{path}: not a readable SentencePiece model ({reason}); "
                        "rerun the prepare stage") from None
