"""Memory before it costs a run: `train.batch_tokens: auto` and the out-of-memory line.

`auto` runs one training step (forward, backward, optimizer step) on the batch of
each probed size that needs the most memory, on the device the run trains on, and
keeps the largest size whose step fits in (1 - HEADROOM) of the memory available
to it: on a GPU the free device memory plus what this process has cached, on the
CPU the machine's available RAM, measured as the growth of the process's resident
set. Sizes double from START_TOKENS; before each probe the next step's need is
predicted from the last one (memory grows about linearly with batch tokens), so a
probe that would exhaust RAM is never run; at the end one probe fills the gap
towards the predicted limit.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from . import device as devices
from .batching import Batch, collate, group_by_tokens
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
def _reset_cpu_peak() -> bool:
    """Linux: reset the process's peak resident set (VmHWM) so the next read is this step's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _cpu_peak_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def available_bytes(device: torch.device) -> int:
    """What this run may still use: free GPU memory plus this process's unused cache, or the
    machine's available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    import psutil

    # torchrun's ranks on this machine share its RAM
    return psutil.virtual_memory().available // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def step_need(step: Callable[[Batch], None], batch: Batch, device: torch.device,
              cpu_base: int) -> int:
    """Bytes one training step on `batch` needs beyond what the process held before the
    first probe (`cpu_base`, the resident set then; on a GPU, what is allocated now)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            step(batch)
            torch.cuda.synchronize(device)
        except torch.OutOfMemoryError:
            raise DoesNotFit from None
        finally:
            torch.cuda.empty_cache()
        return torch.cuda.max_memory_allocated(device) - before
    # The peak counts from the first probe's baseline: freed memory the allocator keeps
    # would hide most of a later step's growth.
    if not _reset_cpu_peak():
        log.debug("cannot reset the peak RSS here: measuring against the process's peak")
    try:
        step(batch)
    except MemoryError:
        raise DoesNotFit from None
    return max(_cpu_peak_bytes() - cpu_base, 0)


def training_step(params: Params, cfg: ModelConfig, device: torch.device,
                  bf16: bool) -> Callable[[Batch], None]:
    """One optimizer step of a fresh model as the trainer runs it (the model's forward
    with its loss under autocast, backward, Adam's state), for probing only."""
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

    return step


def choose_batch_tokens(params: Params, cfg: ModelConfig, device: torch.device, bf16: bool,
                        src_ids: list[list[int]], tgt_ids: list[list[int]],
                        special: SpecialIds) -> int:
    """`train.batch_tokens: auto`: the largest batch (tokens) whose step fits, logged."""
    import psutil

    cpu_base = psutil.Process().memory_info().rss
    budget = int((1 - HEADROOM) * available_bytes(device))
    step = training_step(params, cfg, device, bf16)
    cap = sum(len(s) + len(t) + 2 for s, t in zip(src_ids, tgt_ids))

    def need(tokens: int) -> int:
        return step_need(step, hungriest(src_ids, tgt_ids, tokens, special), device, cpu_base)

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


def hungriest(src_ids: list[list[int]], tgt_ids: list[list[int]], batch_tokens: int,
              special: SpecialIds) -> Batch:
    """The batch of `batch_tokens` whose step needs the most memory: the most padded
    positions, weighted by length (attention's share grows with it)."""
    src_lens, tgt_lens = [len(s) + 1 for s in src_ids], [len(t) + 1 for t in tgt_ids]

    def cost(group: list[int]) -> int:
        s, t = max(src_lens[i] for i in group), max(tgt_lens[i] for i in group)
        return len(group) * (s * s + t * t)

    group = max(group_by_tokens(src_lens, tgt_lens, batch_tokens), key=cost)
    return collate([(src_ids[i], tgt_ids[i]) for i in group], special)


@contextlib.contextmanager
def out_of_memory_hint(batch_tokens: int, accum_steps: int, where: str) -> Iterator[None]:
    """Turn an out-of-memory error into one line naming the batch size and the next step."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError):
        raise UserError(
            f"train: out of memory on {where} at train.batch_tokens={batch_tokens}; try "
            f"train.batch_tokens={max(batch_tokens // 2, 16)} with "
            f"train.accum_steps={accum_steps * 2} (the same tokens per optimizer step), or "
            f"train.batch_tokens: auto") from None
