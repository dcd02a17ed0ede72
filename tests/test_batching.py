"""Token-count batching: every pair once, within budget, little padding, seeded order."""
import random

from nmt.batching import collate, epoch_order, group_by_tokens, make_batches, padding_fraction
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
