"""train.batch_tokens: auto (nmt/memory.py): the search on simulated memory, one real probe
on the CPU, and the out-of-memory line."""
from __future__ import annotations

import pytest
import torch

from nmt import memory
from nmt.errors import UserError
from nmt.model import ModelConfig
from nmt.params import from_dict
from nmt.tokenizer import SpecialIds

MB = 2**20


def linear_need(per_token: int, fixed: int):
    """A step's memory as a model's usually grows: activations per token plus a fixed part."""
    return lambda tokens: per_token * tokens + fixed


@pytest.mark.parametrize("budget_mb", [3, 10, 40, 200])
def test_picks_nearly_the_largest_size_that_fits_and_never_probes_over_budget(budget_mb):
    need = linear_need(1000, 500_000)
    budget = budget_mb * MB
    largest = (budget - 500_000) // 1000  # what fits exactly
    tokens, probes = memory.search(need, budget, cap=10**9)
    assert need(tokens) <= budget
    assert tokens >= 0.95 * largest
    assert all(used is not None and used <= budget for _, used in probes)
    assert len(probes) <= 12


def test_a_probe_that_runs_out_of_memory_is_not_chosen():
    """The device gives out earlier than the free-memory figure promised (fragmentation)."""
    def need(tokens):
        if tokens > 3000:
            raise memory.DoesNotFit
        return 100 * tokens
    tokens, probes = memory.search(need, budget=100 * MB, cap=10**9)
    assert tokens == 2048
    assert (4096, None) in probes


def test_faster_than_linear_growth_still_ends_under_the_budget():
    need = lambda tokens: tokens * tokens  # noqa: E731 - attention-heavy: quadratic
    tokens, _ = memory.search(need, budget=50_000_000, cap=10**9)
    assert need(tokens) <= 50_000_000 < need(tokens * 2)


def test_a_small_corpus_is_one_batch_at_most():
    tokens, _ = memory.search(linear_need(10, 0), budget=10**9, cap=3000)
    assert tokens == 3000


def test_when_the_start_does_not_fit_it_halves_and_says_when_nothing_fits():
    tokens, probes = memory.search(linear_need(1000, 0), budget=300_000, cap=10**9)
    assert tokens == 256 and [t for t, _ in probes][:3] == [1024, 512, 256]
    with pytest.raises(UserError, match=r"^train.batch_tokens: auto: not even 128 tokens fit"):
        memory.search(linear_need(1000, 10**9), budget=10**6, cap=10**9)


def test_params_accept_a_number_or_auto_only():
    assert from_dict({"train": {"batch_tokens": "auto"}}).train.batch_tokens == "auto"
    with pytest.raises(UserError, match=r"^train.batch_tokens: expected an integer or 'auto'"):
        from_dict({"train": {"batch_tokens": "big"}})


def test_real_probe_on_the_cpu_measures_the_step(monkeypatch):
    """A tiny model on the CPU with memory to spare: every probe ran a step that needed
    some memory, and the choice is the whole (small) training set."""
    params = from_dict({"model": {"d_model": 32, "nhead": 2, "dim_feedforward": 64,
                                  "num_encoder_layers": 1, "num_decoder_layers": 1}})
    src = [[5 + (i + j) % 40 for j in range(8 + i % 20)] for i in range(80)]
    tgt = [[5 + (i * j) % 40 for j in range(6 + i % 25)] for i in range(80)]
    cfg = ModelConfig.from_params(params.model, 64, 64, True, 0)
    device = torch.device("cpu")
    special = SpecialIds(pad=0, bos=1, eos=2)
    needs = {}
    real_search = memory.search

    def recording_search(need, budget, cap):
        tokens, probes = real_search(need, budget, cap)
        needs.update(probes)
        return tokens, probes

    monkeypatch.setattr(memory, "search", recording_search)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 10**12)
    cap = sum(len(s) + len(t) + 2 for s, t in zip(src, tgt))
    assert memory.choose_batch_tokens(params, cfg, device, False, src, tgt, special) == cap
    assert all(v is not None and v > 0 for v in needs.values())


def test_out_of_memory_is_one_line_naming_the_batch_and_the_next_step():
    with pytest.raises(UserError) as e:
        with memory.out_of_memory_hint(8192, 2, "cuda:0"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert str(e.value) == (
        "train: out of memory on cuda:0 at train.batch_tokens=8192; try "
        "train.batch_tokens=4096 with train.accum_steps=4 (the same tokens per optimizer "
        "step), or train.batch_tokens: auto")
