"""Token-count batches from length-sorted buckets.

Pairs are sorted by the longer side's length, then source, then target length,
so each batch holds pairs whose both sides have nearly equal lengths (little
padding: docs/speed.md has the measured shares); a batch takes pairs
while (sentences x longest source) + (sentences x longest target) stays within
`batch_tokens`. The batches are fixed once; each epoch visits them in an
order drawn from (seed, epoch), so a resumed run can rebuild any epoch's order
without saved RNG state.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
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


def group_by_tokens(src_lens: list[int], tgt_lens: list[int], batch_tokens: int,
                    seed: int = 0) -> list[list[int]]:
    """Indices of pairs, grouped into batches of at most `batch_tokens` padded tokens.

    Lengths include the eos/bos token each side gets. A single pair longer than
    the budget gets a batch of its own rather than being dropped.
    """
    rng = random.Random(seed)
    tie = [rng.random() for _ in src_lens]  # random order among equal lengths
    order = sorted(range(len(src_lens)),
                   key=lambda i: (max(src_lens[i], tgt_lens[i]), src_lens[i], tgt_lens[i], tie[i]))
    batches: list[list[int]] = []
    cur: list[int] = []
    max_s = max_t = 0
    for i in order:
        s, t = max(max_s, src_lens[i]), max(max_t, tgt_lens[i])
        if cur and (len(cur) + 1) * (s + t) > batch_tokens:
            batches.append(cur)
            cur, s, t = [], src_lens[i], tgt_lens[i]
        cur.append(i)
        max_s, max_t = s, t
    if cur:
        batches.append(cur)
    return batches


def epoch_order(n_batches: int, seed: int, epoch: int) -> list[int]:
    """The order of batch indices in a given epoch (1-based), the same on every run."""
    order = list(range(n_batches))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def collate(pairs: list[tuple[list[int], list[int]]], special: SpecialIds) -> Batch:
    """Pad a list of (source ids, target ids) into one Batch."""
    pad, bos, eos = special.pad, special.bos, special.eos
    n = len(pairs)
    s_len = max(len(s) for s, _ in pairs) + 1
    t_len = max(len(t) for _, t in pairs) + 1
    src = torch.full((n, s_len), pad, dtype=torch.long)
    tgt_in = torch.full((n, t_len), pad, dtype=torch.long)
    tgt_out = torch.full((n, t_len), pad, dtype=torch.long)
    for row, (s, t) in enumerate(pairs):
        src[row, :len(s) + 1] = torch.tensor(s + [eos])
        tgt_in[row, :len(t) + 1] = torch.tensor([bos] + t)
        tgt_out[row, :len(t) + 1] = torch.tensor(t + [eos])
    n_tgt = sum(len(t) + 1 for _, t in pairs)
    return Batch(src, tgt_in, tgt_out, n_tgt)


def padding_fraction(batches: list[Batch], pad: int) -> float:
    """Share of source and target positions that are padding."""
    total = sum(b.src.numel() + b.tgt_out.numel() for b in batches)
    real = sum(int((b.src != pad).sum()) + int((b.tgt_out != pad).sum()) for b in batches)
    return 1.0 - real / max(total, 1)


def make_batches(src_ids: list[list[int]], tgt_ids: list[list[int]], batch_tokens: int,
                 special: SpecialIds, seed: int = 0) -> list[Batch]:
    """Encoded pairs -> fixed list of padded batches (built once, reused every epoch)."""
    groups = group_by_tokens([len(s) + 1 for s in src_ids], [len(t) + 1 for t in tgt_ids],
                             batch_tokens, seed)
    return [collate([(src_ids[i], tgt_ids[i]) for i in g], special) for g in groups]


def encode_pairs(tok: Tokenizers, src_path, tgt_path) -> tuple[list, list]:
    """Encode a parallel file pair into token ids."""
    return (tok.encode_src(read_utf8_lines(src_path)),
            tok.encode_tgt(read_utf8_lines(tgt_path)))


def too_long(src: list, tgt: list, limit: int) -> list[int]:
    """Indices of the pairs with a side over `limit` tokens: the model's position table
    (model.max_positions) holds `limit` tokens plus the eos/bos each side gets."""
    return [i for i, (s, t) in enumerate(zip(src, tgt)) if max(len(s), len(t)) > limit]


def fit_positions(train: tuple[list, list], val: tuple[list, list], val_path, limit: int
                  ) -> tuple[list, list]:
    """The training pairs that fit model.max_positions, the others dropped and counted.
    A validation pair that does not fit is an error: the validation loss must cover the
    whole validation set, or runs with different max_positions would not compare."""
    if bad := too_long(*val, limit):
        longest = max(max(len(val[0][i]), len(val[1][i])) for i in bad)
        raise UserError(f"model.max_positions: {len(bad)} validation pairs in {val_path} are "
                        f"longer than its {limit} tokens (+ eos), the longest {longest}; "
                        f"raise it to at least {longest + 1}")
    src, tgt = train
    if not (bad := set(too_long(src, tgt, limit))):
        return src, tgt
    log.warning("%d of %d training pairs are longer than model.max_positions allows (%d tokens "
                "+ eos): left out", len(bad), len(src), limit)
    if len(bad) == len(src):
        raise UserError(f"model.max_positions: every training pair is longer than {limit} "
                        f"tokens (+ eos); raise it")
    keep = [i for i in range(len(src)) if i not in bad]
    return [src[i] for i in keep], [tgt[i] for i in keep]
