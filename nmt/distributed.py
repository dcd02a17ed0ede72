"""Data-parallel training over several processes, launched by torchrun.

`train.nproc_per_node: N` makes the train stage re-run itself under
`torchrun --nproc-per-node N` (several machines: `train.nnodes`, with MASTER_ADDR,
MASTER_PORT and NODE_RANK in each machine's environment). Each optimizer step takes a window
of accum_steps x ranks batches; every rank trains on its share of the window and
DistributedDataParallel averages the gradients, so the step equals one process
summing the whole window's gradients (accum_steps x ranks batches). Every rank
keeps the same progress; only rank 0 writes the state, the checkpoints, the logs
and the metrics. NCCL on GPUs, gloo on the CPU.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import TypeVar

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
    sys.exit(subprocess.run(cmd, env=env).returncode)


def init(device: torch.device) -> None:
    """Join the process group torchrun prepared; quiet the other ranks' logs."""
    if world_size() == 1 or dist.is_initialized():
        return
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
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


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


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on one: decisions that stop the loop (the time
    budget) must be taken by all ranks together, or the others wait forever."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
