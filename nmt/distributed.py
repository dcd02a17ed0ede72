"""Data-parallel training over several processes, launched by torchrun.

`train.nproc_per_node: N` makes the train stage re-run itself under
`torchrun --nproc-per-node N` (several machines: `train.nnodes`, with MASTER_ADDR,
MASTER_PORT and NODE_RANK in each machine's environment). Each optimizer step takes a window
of accum_steps x ranks batches; every rank trains on its share of the window and
DistributedDataParallel averages the gradients, so the step equals one process
summing the whole window's gradients (accum_steps x ranks batches): bit for bit
without dropout; with dropout, in distribution only, since each rank draws its own
masks where one process draws them all from one stream. Every rank
keeps the same progress; only rank 0 writes the state, the checkpoints, the logs
and the metrics. NCCL on GPUs, gloo on the CPU.

Random streams: rank 0 keeps the run's stream (the seed, then the model's
initialisation), so one process draws exactly what it always drew; rank r > 0
reseeds from (seed, r), so the ranks draw different dropout masks. Each rank's
state is gathered to rank 0 into the one resume file and handed back to its rank
on resume (nmt/resume.py).

One decision for all: validation is split across the ranks and its sums added
up (`totals`); rank 0 decides the time budget, the plateau guard and early
stopping, and every rank takes its decision (`from_main`, `main_says`).

No orphans: a rank dies with the torchrun agent that started it, and torchrun
with the stage process that launched it, however they die (kill -9 included):
Linux's parent-death signal, PR_SET_PDEATHSIG (`die_with_parent`).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from . import device as devices
from .errors import UserError
from .params import Train

log = logging.getLogger("nmt.distributed")

T = TypeVar("T")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """The process that writes: rank 0 of all machines (the only one without torchrun)."""
    return rank() == 0


def wanted(train: Train) -> int:
    """How many processes train.nproc_per_node and train.nnodes ask for."""
    return train.nproc_per_node * train.nnodes


def launch_command(train: Train, module: str) -> list[str] | None:
    """The torchrun command that runs `python -m module` on this machine's share of the
    ranks, or None when this process should train itself (one process, or already under
    torchrun)."""
    if wanted(train) == 1 or "LOCAL_RANK" in os.environ:
        return None
    cmd = [sys.executable, "-m", "torch.distributed.run",
           f"--nproc-per-node={train.nproc_per_node}"]
    if train.nnodes == 1:
        cmd.append("--standalone")  # a free local port: queued runs never collide
    else:  # static rendezvous: node 0, the machine DVC runs on, holds rank 0, the writer
        missing = [v for v in ("MASTER_ADDR", "NODE_RANK") if not os.environ.get(v)]
        if missing:
            raise UserError(f"train.nnodes: {train.nnodes} machines need {' and '.join(missing)} "
                            f"in the environment: MASTER_ADDR, the first machine's address (the "
                            f"same everywhere), NODE_RANK, 0 there and 1..{train.nnodes - 1} on "
                            f"the others (MASTER_PORT defaults to 29500)")
        cmd += [f"--nnodes={train.nnodes}", f"--node-rank={os.environ['NODE_RANK']}",
                f"--master-addr={os.environ['MASTER_ADDR']}",
                f"--master-port={os.environ.get('MASTER_PORT', '29500')}"]
    return cmd + ["-m", module]


def launch(cmd: list[str], train: Train) -> None:
    """Run the stage under torchrun and leave with its exit status. With several GPUs the
    ranks get nproc_per_node of them that no other run claimed (nmt/device.py), held until
    torchrun ends, so a multi-GPU run can share a machine with queued one-GPU runs."""
    env = dict(os.environ)
    if train.device != "cpu" and torch.cuda.device_count() > 1:
        gpus = devices.visible_gpus()
        held = devices.claim_gpus(train.nproc_per_node, gpus, devices.gpu_lock_dir())
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[i] for i, _ in held)
    log.info("running the stage under torchrun: %s", " ".join(cmd))
    # torchrun dies with this process (SIGTERM: it stops its ranks on the way out), so a
    # kill -9 of the stage, or of dvc above it, leaves no training running on.
    sys.exit(subprocess.run(cmd, env=env, preexec_fn=_parent_death_signal(signal.SIGTERM))
             .returncode)


# ---- no orphans ----------------------------------------------------------------------------
PR_SET_PDEATHSIG = 1  # linux/prctl.h
AGENT_NAMES = (b"torch.distributed.run", b"torchrun")  # how the agent's command line reads
WATCH_SECONDS = 1.0


def _parent_death_signal(sig: int) -> Callable[[], int] | None:
    """A function that asks the kernel to send `sig` to the calling process when its parent
    dies (Linux's PR_SET_PDEATHSIG; it survives exec) and returns 0 on success, for
    subprocess's preexec_fn; None where there is no such call."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the child

    def set_signal() -> int:
        return prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return set_signal


def die_with_parent() -> None:
    """Under torchrun: this rank ends when the agent that started it ends, however it ends.

    torchrun starts each rank in a session of its own, so a signal to the agent's process
    group misses them, and a kill -9 of the agent leaves them training on. On Linux the
    kernel sends this process SIGKILL when its parent dies (PR_SET_PDEATHSIG). The agent
    starts its ranks from its main thread, which lives as long as the agent (the signal
    follows the thread that forked). The agent may already have died before this call
    (the rank then belongs to another reaper): the parent must still be the agent. Where
    prctl is missing (not Linux) a thread watches the parent's id instead, every second."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:  # not started by torchrun's agent
        return
    parent = os.getppid()
    setter = _parent_death_signal(signal.SIGKILL)
    if setter is None or setter() != 0:
        if setter is not None:
            log.warning("rank %d: PR_SET_PDEATHSIG failed (errno %d): watching the agent's "
                        "process id instead", rank(), ctypes.get_errno())
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                         name="watch-agent").start()
        return
    try:
        cmdline = Path(f"/proc/{parent}/cmdline").read_bytes()
    except OSError:
        cmdline = b""
    if not any(name in cmdline for name in AGENT_NAMES):
        log.warning("rank %d: the torchrun agent that started it is gone: exiting", rank())
        os._exit(1)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_SECONDS)
    os.kill(os.getpid(), signal.SIGKILL)


def init(device: torch.device) -> None:
    """Join the process group torchrun prepared; quiet the other ranks' logs."""
    if world_size() == 1 or dist.is_initialized():
        return
    die_with_parent()
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    if not is_main():
        logging.getLogger("nmt").setLevel(logging.WARNING)


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module | None:
    """DistributedDataParallel around the model when there are several ranks (None on
    one): it broadcasts rank 0's weights now and averages the gradients in each
    synchronised backward. Its forward is the model's, loss included."""
    if world_size() == 1:
        return None
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def shard(window: list[T]) -> list[T]:
    """This rank's batches of a step's window: every world_size-th one, from its rank on.
    A rank left without one (the epoch's last, short window) gets the window's first
    batch, which `share_weight` zeroes: it still joins the gradient averaging."""
    mine = window[rank()::world_size()]
    return mine or window[:1]


def share_weight(window: list[T]) -> float:
    """What this rank's losses are multiplied by before backward: DDP divides the summed
    gradients by the number of ranks, so each rank's share counts world_size times; a rank
    that got a stand-in batch counts 0."""
    return float(world_size()) if window[rank()::world_size()] else 0.0


@contextlib.contextmanager
def accumulating(module: torch.nn.Module | None, last: bool) -> Iterator[None]:
    """Within a rank's own accumulation: synchronise the gradients on its last backward only."""
    if module is not None and not last:
        with module.no_sync():
            yield
    else:
        yield


def total(value: float, device: torch.device) -> float:
    """The sum of `value` over all ranks (the window's loss from each rank's share)."""
    return totals([value], device)[0]


def totals(values: Sequence[float], device: torch.device) -> list[float]:
    """Each of `values` summed over all ranks, in float64, in one all-reduce."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def rank_share(items: Sequence[T]) -> Sequence[T]:
    """This rank's part of a list all ranks hold (the validation batches): every
    world_size-th item from its rank on; some ranks may get one item fewer, or none."""
    return items[rank()::world_size()]


def main_says(flag: bool, device: torch.device) -> bool:
    """Rank 0's `flag` on every rank: a decision that stops the loop (the time budget,
    by rank 0's clock) is taken once, and every rank stops at the same step."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def gather(obj: T) -> list[T] | None:
    """Every rank's `obj`, in rank order, on rank 0 (None on the others; pickled, through
    the current device under NCCL)."""
    if world_size() == 1:
        return [obj]
    box = [None] * world_size() if is_main() else None
    dist.gather_object(obj, box, dst=0)
    return box


# ---- random streams ------------------------------------------------------------------------
def rank_seed(seed: int, r: int) -> int:
    """The seed of rank r's random streams, from the run's seed and the rank (r > 0)."""
    digest = hashlib.sha256(f"{seed}/rank {r}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # what torch.manual_seed takes


def seed_rank(seed: int) -> None:
    """Give this rank its own random streams (Python, NumPy, torch on every device),
    once the model is initialised. Rank 0 keeps the stream it has (seed, then the
    model's initialisation): a one-process run draws what it always drew."""
    if rank() == 0:
        return
    derived = rank_seed(seed, rank())
    random.seed(derived)
    np.random.seed(derived % 2**32)
    torch.manual_seed(derived)


def from_main(obj: T, device: torch.device) -> T:
    """Rank 0's `obj` on every rank (pickled; tensors included)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
    return box[0]


def smallest(value: int, device: torch.device) -> int:
    """The smallest of each rank's `value` (each probed its own device's memory)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())
