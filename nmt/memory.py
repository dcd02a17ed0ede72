"""Memory before it costs a run: `train.batch_tokens: auto` and the out-of-memory line.

`auto` runs one training step (forward, backward, optimizer step) on the batch of
each probed size that needs the most memory, on the device the run trains on, and
keeps the largest size whose step fits in (1 - HEADROOM) of the memory available
to it: on a GPU the free device memory plus what this process has cached, on the
CPU the machine's available RAM. Both are taken before the probe's model exists,
so a step's need counts everything the run will hold from that point: the
weights, their gradients, the optimizer's state and the activations (the peak
allocated on a GPU, the growth of the resident set on the CPU), plus, under
torchrun, DistributedDataParallel's gradient buckets (one more copy of the
gradients). Sizes double from START_TOKENS; before each probe the next step's
need is predicted from the last one (memory grows about linearly with batch
tokens), so a probe that would exhaust RAM is never run; at the end one probe
fills the gap towards the predicted limit. Where a measurement has to fall back
to a coarser one, it says so at warning level.

The out-of-memory line of training names the settings to change (translation's is in
nmt/translation.py).
"""
from __future__ import annotations

import contextlib
import logging
import os
import resource
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from . import device as devices
from .batching import Batch, Sentences, collate_rows, packing
from .errors import UserError
from .model import ModelConfig, Seq2SeqTransformer
from .optim import build_optimizer
from .params import Params
from .tokenizer import SpecialIds

log = logging.getLogger("nmt.memory")

HEADROOM = 0.2  # share of the available memory left free: allocator slack, other processes
START_TOKENS = 1024
MIN_TOKENS = 64
ROUND_TO = 64


class DoesNotFit(Exception):
    """A probe ran out of memory (or would have)."""


def search(need: Callable[[int], int], budget: int, cap: int,
           start: int = START_TOKENS) -> tuple[int, list[tuple[int, int | None]]]:
    """The largest batch size (tokens) whose step needs at most `budget` bytes, and every
    probe as (tokens, bytes needed; None when it ran out of memory).

    `need(tokens)` runs one step and returns the bytes it needed beyond what the process
    held before, or raises DoesNotFit. Sizes never exceed `cap` (the whole training set)."""
    probes: list[tuple[int, int | None]] = []

    def fits(tokens: int) -> int | None:
        try:
            used = need(tokens)
        except DoesNotFit:
            probes.append((tokens, None))
            return None
        probes.append((tokens, used))
        return used if used <= budget else None

    tokens = min(start, cap)
    used = fits(tokens)
    while used is None:  # not even the start: halve down to the smallest useful batch
        tokens //= 2
        if tokens < MIN_TOKENS:
            raise UserError(f"train.batch_tokens: auto: not even {MIN_TOKENS * 2} tokens fit in "
                            f"{budget / 2**20:,.0f} MB; free memory, or use a smaller model")
        used = fits(tokens)
    fitted = [(tokens, used)]  # the probes that fit, in increasing size

    def predicted_limit() -> int:
        """The size whose step would need the whole budget: on the line through the last two
        fits (a fixed part plus a per-token part), or in proportion to the one fit."""
        (b, ub) = fitted[-1]
        if len(fitted) > 1 and ub > fitted[-2][1]:
            a, ua = fitted[-2]
            return int(b + (budget - ub) * (b - a) / (ub - ua))
        return int(b * budget / max(ub, 1))

    while fitted[-1][0] < cap:
        nxt = min(fitted[-1][0] * 2, cap)
        if nxt > predicted_limit():  # predicted not to fit: do not try it
            break
        used = fits(nxt)
        if used is None:
            break
        fitted.append((nxt, used))
    best = fitted[-1][0]
    # Between the last fit and the next doubling: the predicted limit, probed once.
    guess = min(cap, predicted_limit() // ROUND_TO * ROUND_TO, best * 2 - ROUND_TO)
    if guess > best and fits(guess) is not None:
        best = guess
    return best, probes


# ---- measuring one step on a real device -------------------------------------------------
class CpuPeak:
    """The process's peak resident set since the last `reset`: Linux's VmHWM, reset through
    /proc/self/clear_refs. Where either is missing, the peak since the process started
    (getrusage), which can only read high; each fallback logs one warning."""

    def __init__(self) -> None:
        self.warned: set[str] = set()

    def _warn(self, what: str) -> None:
        if what not in self.warned:
            self.warned.add(what)
            log.warning("train.batch_tokens: auto: %s", what)

    def reset(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError as e:
            self._warn(f"cannot reset the peak resident set ({e.strerror or e}): each probe is "
                       f"measured against the process's peak so far, which can only read high")

    def read(self) -> int:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
            raise OSError("no VmHWM in /proc/self/status")
        except OSError as e:
            self._warn(f"no peak resident set to read ({e}): using the process's peak since "
                       f"it started (getrusage), which can only read high")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes there, KiB here


def held_bytes(device: torch.device) -> int:
    """What the process holds now: allocated GPU memory, or its resident set on the CPU.
    A probe's need is its peak above this, taken before the probe's model exists."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device)
    import psutil

    return psutil.Process().memory_info().rss


def ddp_bucket_bytes(model: torch.nn.Module) -> int:
    """What DistributedDataParallel adds under torchrun (WORLD_SIZE > 1): its buckets hold
    one more copy of the gradients (0 on one process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def available_bytes(device: torch.device) -> int:
    """What this run may still use: free GPU memory plus this process's unused cache, or the
    machine's available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    import psutil

    # torchrun's ranks on this machine share its RAM
    return psutil.virtual_memory().available // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def step_need(step: Callable[[Batch], None], batch: Batch, device: torch.device, base: int,
              cpu_peak: CpuPeak) -> int:
    """Bytes one training step on `batch` needs above `base`, what the process held before
    the probe's model existed (`held_bytes`): the model, its gradients and optimizer state
    count, as they will in the run."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            step(batch)
            torch.cuda.synchronize(device)
        except torch.OutOfMemoryError:
            raise DoesNotFit from None
        finally:
            torch.cuda.empty_cache()
        return torch.cuda.max_memory_allocated(device) - base
    # The peak counts from the same baseline every time: freed memory the allocator keeps
    # would hide most of a later step's growth.
    cpu_peak.reset()
    try:
        step(batch)
    except MemoryError:
        raise DoesNotFit from None
    return max(cpu_peak.read() - base, 0)


def training_step(params: Params, cfg: ModelConfig, device: torch.device,
                  bf16: bool) -> tuple[Callable[[Batch], None], torch.nn.Module]:
    """One optimizer step of a fresh model as the trainer runs it (the model's forward
    with its loss under autocast, backward, the optimizer's state), for probing only; and
    the model."""
    model = Seq2SeqTransformer(cfg).to(device)
    optimizer = build_optimizer(params.optim, model)

    def step(batch: Batch) -> None:
        b = batch.to(device)
        optimizer.zero_grad(set_to_none=True)
        with devices.autocast(device, bf16):
            loss_sum, _ = model(b.src, b.tgt_in, b.tgt_out,
                                label_smoothing=params.loss.label_smoothing)
        (loss_sum / b.n_tgt_tokens).backward()
        optimizer.step()

    return step, model


def choose_batch_tokens(params: Params, cfg: ModelConfig, device: torch.device, bf16: bool,
                        src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]],
                        special: SpecialIds) -> int:
    """`train.batch_tokens: auto`: the largest batch (tokens) whose step fits, logged."""
    base = held_bytes(device)  # before the probe's model: its weights and state count
    budget = int((1 - HEADROOM) * available_bytes(device))
    step, model = training_step(params, cfg, device, bf16)
    buckets = ddp_bucket_bytes(model)
    del model
    src_ids, tgt_ids = Sentences.of(src_ids), Sentences.of(tgt_ids)
    cap = int(src_ids.lengths().sum() + tgt_ids.lengths().sum()) + 2 * len(src_ids)
    cpu_peak = CpuPeak()

    def need(tokens: int) -> int:
        batch = hungriest(src_ids, tgt_ids, tokens, special)
        return step_need(step, batch, device, base, cpu_peak) + buckets

    tokens, probes = search(need, budget, cap)
    del step
    for size, used in probes:
        log.info("batch_tokens %d: %s", size, "out of memory" if used is None else
                 f"the step needs {used / 2**20:,.0f} MB of {budget / 2**20:,.0f} MB")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    log.info(f"train.batch_tokens: auto chose {tokens} tokens on {device} (keeping "
             f"{HEADROOM:.0%} of the {budget / (1 - HEADROOM) / 2**20:,.0f} MB available free)")
    return tokens


def hungriest(src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]],
              batch_tokens: int, special: SpecialIds) -> Batch:
    """The batch of `batch_tokens` whose step needs the most memory: the most padded
    positions, weighted by length (attention's share grows with it); the first of equals."""
    src, tgt = Sentences.of(src_ids), Sentences.of(tgt_ids)
    src_lens, tgt_lens = src.lengths() + 1, tgt.lengths() + 1
    order, bounds = packing(src_lens, tgt_lens, batch_tokens, seed=0)
    starts = bounds[:-1]
    longest_s = np.maximum.reduceat(src_lens[order], starts)
    longest_t = np.maximum.reduceat(tgt_lens[order], starts)
    i = int(np.argmax(np.diff(bounds) * (longest_s ** 2 + longest_t ** 2)))
    return collate_rows(src, tgt, order[bounds[i]:bounds[i + 1]], special)


@contextlib.contextmanager
def out_of_memory_hint(batch_tokens: int, accum_steps: int, where: object) -> Iterator[None]:
    """Turn an out-of-memory error into one line naming the batch size and the next step."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError):
        raise UserError(
            f"train: out of memory on {where} at train.batch_tokens={batch_tokens}; try "
            f"train.batch_tokens={max(batch_tokens // 2, 16)} with "
            f"train.accum_steps={accum_steps * 2} (the same tokens per optimizer step), or "
            f"train.batch_tokens: auto") from None
