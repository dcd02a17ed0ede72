"""Token-count batches from length-sorted buckets.

Pairs are sorted by the longer side's length, then source, then target length,
so each batch holds pairs whose both sides have nearly equal lengths (little
padding: docs/speed.md has the measured shares); a batch takes pairs
while (sentences x longest source) + (sentences x longest target) stays within
`batch_tokens`. The batches are fixed once; each epoch visits them in an
order drawn from (seed, epoch), so a resumed run can rebuild any epoch's order
without saved RNG state.

Held compactly, for corpora of millions of pairs: the encoded sentences are two
numpy arrays (`Sentences`: every id end to end, and where each sentence starts),
a batch is a slice of one sorted index array (`Batches`), and its padded tensors
are made when the loop asks for it, the same tensors every time.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import torch
from torch import Tensor

from .errors import UserError
from .fsio import read_utf8_lines
from .tokenizer import SpecialIds, Tokenizers

log = logging.getLogger("nmt.train")


@dataclass
class Batch:
    src: Tensor  # (B, S) source ids + eos, padded
    tgt_in: Tensor  # (B, T) bos + target ids, padded
    tgt_out: Tensor  # (B, T) target ids + eos, padded
    n_tgt_tokens: int  # real (non-pad) target tokens: the loss normaliser

    def to(self, device: torch.device) -> "Batch":
        nb = device.type == "cuda"
        return Batch(self.src.to(device, non_blocking=nb), self.tgt_in.to(device, non_blocking=nb),
                     self.tgt_out.to(device, non_blocking=nb), self.n_tgt_tokens)


class Sentences(Sequence[list[int]]):
    """The token ids of many sentences in two numpy arrays: `ids`, all of them end to end
    (int32), and `starts`, where each sentence begins (one entry more than sentences).
    About 4 bytes a token, against some 36 for a list of Python ints. A sentence reads
    back as the list of ints the tokenizer gave."""

    def __init__(self, ids: np.ndarray, starts: np.ndarray):
        self.ids, self.starts = ids, starts

    @classmethod
    def of(cls, sentences: Iterable[Sequence[int]]) -> Sentences:
        """From lists of ids (a Sentences is returned as it is)."""
        if isinstance(sentences, Sentences):
            return sentences
        sentences = list(sentences)
        starts = np.zeros(len(sentences) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences)),
                  out=starts[1:])
        ids = np.fromiter((i for ids in sentences for i in ids), dtype=np.int32,
                          count=int(starts[-1]))
        return cls(ids, starts)

    @classmethod
    def encode(cls, encode: Callable[[list[str]], list[list[int]]], lines: Sequence[str],
               chunk: int = 1 << 16) -> Sentences:
        """`encode` (a tokenizer's) applied to `lines` a chunk at a time: only one chunk's
        lists of Python ints exist at once."""
        parts = [cls.of(encode(list(lines[i:i + chunk]))) for i in range(0, len(lines), chunk)]
        if not parts:
            return cls.of([])
        ends = np.cumsum([p.starts[-1] for p in parts])
        starts = np.concatenate([np.zeros(1, dtype=np.int64)] + [
            p.starts[1:] + offset for p, offset in zip(parts, [0, *ends[:-1]])])
        return cls(np.concatenate([p.ids for p in parts]), starts)

    def __len__(self) -> int:
        return len(self.starts) - 1

    @overload
    def __getitem__(self, i: int) -> list[int]: ...
    @overload
    def __getitem__(self, i: slice) -> Sentences: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.select(np.arange(len(self))[i])
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self.ids[self.starts[i]:self.starts[i + 1]].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        return (self[i] for i in range(len(self)))

    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    def select(self, which: np.ndarray) -> Sentences:
        """The sentences at the indices `which` (in that order), or where the boolean mask
        `which` is true."""
        which = np.asarray(which)
        if which.dtype == bool:
            keep = np.repeat(which, self.lengths())
            lengths = self.lengths()[which]
            ids = self.ids[keep]
        else:
            lengths = self.lengths()[which]
            ids = self.ids[_positions(self.starts[which], lengths)]
        starts = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        return Sentences(ids, starts)


def _positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Where the tokens of sentences beginning at `starts`, `lengths` long, lie in `ids`."""
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + offsets


def packing(src_lens: np.ndarray, tgt_lens: np.ndarray, batch_tokens: int,
             seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, bounds): the pairs sorted for batching, and where each batch begins in that
    order (one entry more than batches), as `group_by_tokens` describes; lengths with the
    eos/bos each side gets."""
    n = len(src_lens)
    rng = random.Random(seed)
    tie = np.fromiter((rng.random() for _ in range(n)), dtype=np.float64, count=n)
    src_lens, tgt_lens = np.asarray(src_lens, dtype=np.int64), np.asarray(tgt_lens, dtype=np.int64)
    # Stable, by longer side, source, target, then the random tie (last key sorts first).
    order = np.lexsort((tie, tgt_lens, src_lens, np.maximum(src_lens, tgt_lens)))
    bounds = [0]
    size = max_s = max_t = 0
    for pos, (sl, tl) in enumerate(zip(src_lens[order].tolist(), tgt_lens[order].tolist())):
        s, t = max(max_s, sl), max(max_t, tl)
        if size and (size + 1) * (s + t) > batch_tokens:
            bounds.append(pos)
            size, s, t = 0, sl, tl
        size += 1
        max_s, max_t = s, t
    if size:
        bounds.append(n)
    return order, np.asarray(bounds, dtype=np.int64)


def group_by_tokens(src_lens: Sequence[int], tgt_lens: Sequence[int], batch_tokens: int,
                    seed: int = 0) -> list[list[int]]:
    """Indices of pairs, grouped into batches of at most `batch_tokens` padded tokens.

    Lengths include the eos/bos token each side gets. A single pair longer than
    the budget gets a batch of its own rather than being dropped. Pairs are taken
    sorted by longer side, source, target length, and a random tie from `seed`.
    """
    order, bounds = packing(np.asarray(src_lens), np.asarray(tgt_lens), batch_tokens, seed)
    return [order[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]


def epoch_order(n_batches: int, seed: int, epoch: int) -> list[int]:
    """The order of batch indices in a given epoch (1-based), the same on every run."""
    order = list(range(n_batches))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def padded(sentences: Sentences, rows: np.ndarray, pad: int, first: int | None = None,
           last: int | None = None) -> Tensor:
    """The sentences at `rows` as one (len(rows), longest + 1) long tensor: each one's ids,
    after `first` or before `last` (the one of the two given), then `pad`."""
    lengths = sentences.starts[rows + 1] - sentences.starts[rows]
    out = np.full((len(rows), int(lengths.max()) + 1), pad, dtype=np.int64)
    row_of = np.repeat(np.arange(len(rows)), lengths)
    col = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    shift = 1 if first is not None else 0
    out[row_of, col + shift] = sentences.ids[_positions(sentences.starts[rows], lengths)]
    out[np.arange(len(rows)), 0 if first is not None else lengths] = \
        first if first is not None else last
    return torch.from_numpy(out)


def collate_rows(src: Sentences, tgt: Sentences, rows: np.ndarray, special: SpecialIds
                 ) -> Batch:
    """The pairs at `rows` padded into one Batch: source + eos, bos + target, target + eos."""
    pad = special.pad
    n_tgt = int((tgt.starts[rows + 1] - tgt.starts[rows]).sum()) + len(rows)
    return Batch(padded(src, rows, pad, last=special.eos),
                 padded(tgt, rows, pad, first=special.bos),
                 padded(tgt, rows, pad, last=special.eos), n_tgt)


def collate(pairs: list[tuple[list[int], list[int]]], special: SpecialIds) -> Batch:
    """Pad a list of (source ids, target ids) into one Batch."""
    src, tgt = Sentences.of(s for s, _ in pairs), Sentences.of(t for _, t in pairs)
    return collate_rows(src, tgt, np.arange(len(pairs)), special)


class Batches(Sequence[Batch]):
    """The fixed batches of a set of pairs: batch i is the slice bounds[i]:bounds[i + 1] of
    the sorted `order`, padded into tensors when it is asked for (and then let go)."""

    def __init__(self, src: Sentences, tgt: Sentences, order: np.ndarray, bounds: np.ndarray,
                 special: SpecialIds):
        self.src, self.tgt, self.order, self.bounds = src, tgt, order, bounds
        self.special = special

    def __len__(self) -> int:
        return len(self.bounds) - 1

    @overload
    def __getitem__(self, i: int) -> Batch: ...
    @overload
    def __getitem__(self, i: slice) -> list[Batch]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        rows = self.order[self.bounds[i]:self.bounds[i + 1]]
        return collate_rows(self.src, self.tgt, rows, self.special)

    def padding(self) -> float:
        """Share of source and target positions that are padding (from the lengths)."""
        sizes = np.diff(self.bounds)
        total = real = 0
        for lengths in (self.src.lengths()[self.order] + 1, self.tgt.lengths()[self.order] + 1):
            longest = np.maximum.reduceat(lengths, self.bounds[:-1]) if len(lengths) else lengths
            total += int((longest * sizes).sum())
            real += int(lengths.sum())
        return 1.0 - real / max(total, 1)


def padding_fraction(batches: Sequence[Batch], pad: int) -> float:
    """Share of source and target positions that are padding."""
    if isinstance(batches, Batches):
        return batches.padding()
    total = sum(b.src.numel() + b.tgt_out.numel() for b in batches)
    real = sum(int((b.src != pad).sum()) + int((b.tgt_out != pad).sum()) for b in batches)
    return 1.0 - real / max(total, 1)


def make_batches(src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]],
                 batch_tokens: int, special: SpecialIds, seed: int = 0) -> Batches:
    """Encoded pairs -> their fixed batches (grouped once, reused every epoch)."""
    src, tgt = Sentences.of(src_ids), Sentences.of(tgt_ids)
    order, bounds = packing(src.lengths() + 1, tgt.lengths() + 1, batch_tokens, seed)
    return Batches(src, tgt, order, bounds, special)


def encode_pairs(tok: Tokenizers, src_path, tgt_path) -> tuple[Sentences, Sentences]:
    """Encode a parallel file pair into token ids, held compactly (`Sentences`)."""
    return (Sentences.encode(tok.encode_src, read_utf8_lines(src_path)),
            Sentences.encode(tok.encode_tgt, read_utf8_lines(tgt_path)))


def too_long(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], limit: int
             ) -> np.ndarray:
    """Indices of the pairs with a side over `limit` tokens: the model's position table
    (model.max_positions) holds `limit` tokens plus the eos/bos each side gets."""
    longer = np.maximum(Sentences.of(src).lengths(), Sentences.of(tgt).lengths())
    return np.flatnonzero(longer > limit)


def fit_positions(train: tuple[Sequence, Sequence], val: tuple[Sequence, Sequence], val_path,
                  limit: int) -> tuple[Sentences, Sentences]:
    """The training pairs that fit model.max_positions, the others dropped and counted.
    A validation pair that does not fit is an error: the validation loss must cover the
    whole validation set, or runs with different max_positions would not compare."""
    val_src, val_tgt = map(Sentences.of, val)
    if len(bad := too_long(val_src, val_tgt, limit)):
        longest = int(np.maximum(val_src.lengths(), val_tgt.lengths())[bad].max())
        raise UserError(f"model.max_positions: {len(bad)} validation pairs in {val_path} are "
                        f"longer than its {limit} tokens (+ eos), the longest {longest}; "
                        f"raise it to at least {longest + 1}")
    src, tgt = map(Sentences.of, train)
    if not len(bad := too_long(src, tgt, limit)):
        return src, tgt
    log.warning("%d of %d training pairs are longer than model.max_positions allows (%d tokens "
                "+ eos): left out", len(bad), len(src), limit)
    if len(bad) == len(src):
        raise UserError(f"model.max_positions: every training pair is longer than {limit} "
                        f"tokens (+ eos); raise it")
    keep = np.ones(len(src), dtype=bool)
    keep[bad] = False
    return src.select(keep), tgt.select(keep)
