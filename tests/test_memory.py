"""train.batch_tokens: auto (nmt/memory.py): the search on simulated memory, one real probe
on the CPU, and the out-of-memory lines (training's; translation's, nmt/translation.py)."""
from __future__ import annotations

import pytest
import torch

from nmt import memory, translation
from nmt.errors import UserError
from nmt.model import ModelConfig
from nmt.params import Translate, from_dict
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
    needs = record_search(monkeypatch)
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


class FakeCuda:
    """A GPU's allocator ledger: what is allocated now, and the peak since the last reset."""

    def __init__(self, free: int):
        self.free, self.allocated, self.peak = free, 0, 0

    def alloc(self, n: int) -> None:
        self.allocated += n
        self.peak = max(self.peak, self.allocated)

    def install(self, monkeypatch) -> None:
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "synchronize", lambda device=None: None)
        monkeypatch.setattr(cuda, "empty_cache", lambda: None)
        monkeypatch.setattr(cuda, "mem_get_info", lambda device=None: (self.free, self.free))
        monkeypatch.setattr(cuda, "memory_reserved", lambda device=None: self.allocated)
        monkeypatch.setattr(cuda, "memory_allocated", lambda device=None: self.allocated)
        monkeypatch.setattr(cuda, "max_memory_allocated", lambda device=None: self.peak)
        monkeypatch.setattr(cuda, "reset_peak_memory_stats",
                            lambda device=None: setattr(self, "peak", self.allocated))


@pytest.mark.parametrize("ranks", [1, 2])
def test_gpu_budget_counts_weights_optimizer_state_and_ddp_buckets(monkeypatch, ranks):
    """On a GPU the budget is taken before the probe's model exists, so the need must count
    the model (W), its gradients and Adam's two moments (3 W, made by the first step and
    kept) and, on 2 ranks, DDP's buckets (W), besides the activations. 20 MB of weights on
    a 1000 MB budget: the choice leaves room for all of them."""
    weights, per_token = 20 * MB, 50_000
    gpu = FakeCuda(free=1250 * MB)  # 80% of it: a 1000 MB budget
    gpu.install(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", str(ranks))
    model = torch.nn.Linear(weights // 4, 1, bias=False)  # float32: 20 MB of weights

    def fake_training_step(params, cfg, device, bf16):
        gpu.alloc(weights)  # the model, on the device
        state = []

        def step(batch):
            if not state:  # gradients and Adam's moments: made once, then held
                gpu.alloc(3 * weights)
                state.append(True)
            activations = per_token * batch.src.numel() * 2
            gpu.alloc(activations)
            gpu.alloc(-activations)

        return step, model

    needs = record_search(monkeypatch)
    monkeypatch.setattr(memory, "training_step", fake_training_step)
    src = [[5] * 20 for _ in range(4000)]
    chosen = memory.choose_batch_tokens(from_dict({}), None, torch.device("cuda"), False,
                                        src, src, SpecialIds(pad=0, bos=1, eos=2))
    held = (4 + (ranks > 1)) * weights  # weights, gradients, 2 moments (+ DDP buckets)
    for tokens, need in needs.items():
        assert need is not None and need >= held
    assert max(t for t, n in needs.items() if n <= 1000 * MB) == chosen
    assert all(n > 1000 * MB for t, n in needs.items() if t > chosen)


def test_cpu_fallbacks_log_warnings(monkeypatch, caplog):
    """Without /proc/self/clear_refs (peak not resettable) or VmHWM (no peak to read), the
    CPU probe measures coarser, and says so at warning level, once each."""
    real_write, real_read = memory.Path.write_text, memory.Path.read_text

    def no_clear_refs(path, *args, **kwargs):
        if str(path) == "/proc/self/clear_refs":
            raise PermissionError(13, "Permission denied")
        return real_write(path, *args, **kwargs)

    def no_status(path, *args, **kwargs):
        if str(path) == "/proc/self/status":
            raise FileNotFoundError(2, "No such file or directory")
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(memory.Path, "write_text", no_clear_refs)
    monkeypatch.setattr(memory.Path, "read_text", no_status)
    peak = memory.CpuPeak()
    with caplog.at_level("WARNING", logger="nmt.memory"):
        for _ in range(3):
            peak.reset()
            assert peak.read() > 0
    lines = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 2
    assert "cannot reset the peak resident set" in lines[0].getMessage()
    assert "getrusage" in lines[1].getMessage()


def test_translate_out_of_memory_is_one_line_naming_the_setting_to_lower():
    with pytest.raises(UserError) as e:
        with translation.out_of_memory_hint(Translate(batch_sentences=128, beam_size=4),
                                            "cuda:0"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 6.00 GiB")
    assert str(e.value) == (
        "translate: out of memory on cuda:0 at translate.batch_sentences=128 with "
        "translate.beam_size=4; try translate.batch_sentences=64 (or translate.beam_size=2)")
    with pytest.raises(UserError) as e:
        with translation.out_of_memory_hint(Translate(batch_sentences=1, beam_size=1,
                                                      ensemble=4), "cpu"):
            raise MemoryError
    assert str(e.value) == (
        "translate: out of memory on cpu at translate.batch_sentences=1 with "
        "translate.beam_size=1 and translate.ensemble=4; try translate.ensemble=2")


def record_search(monkeypatch) -> dict:
    """Make memory.search record every probe it is given: {batch tokens: bytes needed}."""
    needs = {}
    real_search = memory.search

    def recording_search(need, budget, cap):
        tokens, probes = real_search(need, budget, cap)
        needs.update(probes)
        return tokens, probes

    monkeypatch.setattr(memory, "search", recording_search)
    return needs
