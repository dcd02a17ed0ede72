"""Token-count batching: every pair once, within budget, little padding, seeded order; the
encoded pairs held compactly and the batches made on demand, the same as made at once."""
import random

import numpy as np
import torch

from nmt.batching import (Sentences, collate, epoch_order, group_by_tokens, make_batches,
                          padding_fraction)
from nmt.tokenizer import SpecialIds


def lengths(n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    src = [rng.randint(3, 40) for _ in range(n)]
    return src, [max(2, s + rng.randint(-4, 4)) for s in src]


def test_every_pair_once_and_within_budget():
    src, tgt = lengths(3000)
    batches = group_by_tokens(src, tgt, batch_tokens=2048, seed=1)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(3000))
    for b in batches:
        assert len(b) * (max(src[i] for i in b) + max(tgt[i] for i in b)) <= 2048


def test_a_pair_longer_than_the_budget_gets_its_own_batch():
    batches = group_by_tokens([5, 300, 6], [5, 280, 6], batch_tokens=100)
    assert [1] in batches and sorted(i for b in batches for i in b) == [0, 1, 2]


def test_padding_under_ten_percent():
    src, tgt = lengths(3000)
    src_ids = [[7] * (n - 1) for n in src]
    tgt_ids = [[7] * (n - 1) for n in tgt]
    batches = make_batches(src_ids, tgt_ids, 2048, SpecialIds())
    assert padding_fraction(batches, pad=0) < 0.10


def test_epoch_order_is_seeded_and_changes_between_epochs():
    assert epoch_order(50, seed=3, epoch=1) == epoch_order(50, seed=3, epoch=1)
    assert epoch_order(50, seed=3, epoch=1) != epoch_order(50, seed=3, epoch=2)
    assert sorted(epoch_order(50, seed=3, epoch=2)) == list(range(50))


def test_collate_shifts_targets():
    b = collate([([5, 6], [7, 8, 9]), ([5], [7])], SpecialIds(pad=0, bos=2, eos=3))
    assert b.src.tolist() == [[5, 6, 3], [5, 3, 0]]
    assert b.tgt_in.tolist() == [[2, 7, 8, 9], [2, 7, 0, 0]]
    assert b.tgt_out.tolist() == [[7, 8, 9, 3], [7, 3, 0, 0]]
    assert b.n_tgt_tokens == 6


def ragged(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randint(4, 8000) for _ in range(rng.randint(0, 30))] for _ in range(n)]


def test_sentences_hold_ids_compactly_and_read_back_as_lists():
    lists = ragged(500)
    held = Sentences.of(lists)
    assert held.ids.dtype == np.int32 and held.ids.nbytes == 4 * sum(map(len, lists))
    assert len(held) == 500 and list(held) == lists and held[-1] == lists[-1]
    assert list(held[10:20]) == lists[10:20]
    mask = np.array([i % 3 == 0 for i in range(500)])
    assert list(held.select(mask)) == [s for s, keep in zip(lists, mask) if keep]
    assert list(held.select(np.array([7, 2, 2]))) == [lists[7], lists[2], lists[2]]
    assert list(Sentences.of([])) == [] and Sentences.of([[]])[0] == []


def test_encoding_a_chunk_at_a_time_gives_what_encoding_at_once_gives():
    lines = [" ".join("x" * (i % 7 + 1) for _ in range(i % 5)) for i in range(1000)]
    def encode(chunk):
        return [[len(w) for w in line.split()] for line in chunk]
    assert list(Sentences.encode(encode, lines, chunk=64)) == encode(lines)
    assert len(Sentences.encode(encode, [])) == 0


def test_batches_made_on_demand_equal_the_batches_made_at_once():
    """What the loop is handed: the pairs of each group_by_tokens group, collated, in order;
    the padding share computed from lengths alone is the tensors' own."""
    src, tgt = ragged(700, seed=1), ragged(700, seed=2)
    batches = make_batches(src, tgt, 600, SpecialIds(pad=0, bos=2, eos=3), seed=5)
    groups = group_by_tokens([len(s) + 1 for s in src], [len(t) + 1 for t in tgt], 600, seed=5)
    assert len(batches) == len(groups)
    for got, group in zip(batches, groups):
        want = collate([(src[i], tgt[i]) for i in group], SpecialIds(pad=0, bos=2, eos=3))
        assert torch.equal(got.src, want.src) and torch.equal(got.tgt_in, want.tgt_in)
        assert torch.equal(got.tgt_out, want.tgt_out) and got.n_tgt_tokens == want.n_tgt_tokens
        assert got.src.dtype == torch.long
    assert abs(padding_fraction(batches, 0) - padding_fraction(list(batches), 0)) < 1e-12


def test_grouping_is_the_one_a_sort_by_length_tuples_gives():
    """The numpy grouping reproduces the Python sort it replaced (longer side, source,
    target, random tie), so a run's batches, and its weights, do not move."""
    def by_python_sort(src_lens, tgt_lens, batch_tokens, seed):
        rng = random.Random(seed)
        tie = [rng.random() for _ in src_lens]
        order = sorted(range(len(src_lens)), key=lambda i: (
            max(src_lens[i], tgt_lens[i]), src_lens[i], tgt_lens[i], tie[i]))
        batches, cur, max_s, max_t = [], [], 0, 0
        for i in order:
            s, t = max(max_s, src_lens[i]), max(max_t, tgt_lens[i])
            if cur and (len(cur) + 1) * (s + t) > batch_tokens:
                batches.append(cur)
                cur, s, t = [], src_lens[i], tgt_lens[i]
            cur.append(i)
            max_s, max_t = s, t
        return batches + [cur] if cur else batches

    src, tgt = lengths(5000, seed=3)  # many equal lengths: the tie decides
    for tokens, seed in ((2048, 1), (300, 1234), (64, 0)):
        assert group_by_tokens(src, tgt, tokens, seed) == by_python_sort(src, tgt, tokens, seed)
