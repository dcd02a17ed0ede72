"""Device choice, mixed precision and the machine's description."""
from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import IO, Any

import torch

from .errors import UserError

log = logging.getLogger("nmt.device")


def pick(preference: str = "auto") -> torch.device:
    """auto: CUDA when available, else CPU."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: 'cuda' asked for, but no CUDA device is available")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return cuda_device()


# ---- one GPU per process -----------------------------------------------------------------
GPU_LOCK_DIR_ENV = "NMT_GPU_LOCK_DIR"
_claimed: dict[str, Any] = {}  # index and the open lock file, held until the process exits


def cuda_device() -> torch.device:
    """The GPU this process trains or translates on.

    Under torchrun each rank takes its LOCAL_RANK. Otherwise, with several visible GPUs,
    the process claims the first one no other run holds (`claim_gpus`), so the workers of
    `dvc queue start -j N` spread over N GPUs instead of all landing on GPU 0."""
    if "LOCAL_RANK" in os.environ:
        index = int(os.environ["LOCAL_RANK"])
    elif torch.cuda.device_count() > 1:
        if "index" not in _claimed:
            [(_claimed["index"], _claimed["file"])] = claim_gpus(1, visible_gpus(),
                                                                 gpu_lock_dir())
        index = _claimed["index"]
    else:
        return torch.device("cuda")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def visible_gpus() -> list[str]:
    """Machine-wide ids of the GPUs this process sees, in CUDA's order: the entries of
    CUDA_VISIBLE_DEVICES when set (index or UUID), else 0..n-1."""
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    n = torch.cuda.device_count()
    if mask:
        return [g.strip() for g in mask.split(",")][:n]
    return [str(i) for i in range(n)]


def gpu_lock_dir() -> Path:
    """Where GPU claims live: $NMT_GPU_LOCK_DIR (set it machine-wide to share GPUs between
    projects), else the project's .dvc/tmp/gpu-locks. Queued experiments run in copies under
    .dvc/tmp/exps/; DVC_ROOT names the project they came from, so all see one folder."""
    if os.environ.get(GPU_LOCK_DIR_ENV):
        return Path(os.environ[GPU_LOCK_DIR_ENV])
    return Path(os.environ.get("DVC_ROOT", ".")) / ".dvc" / "tmp" / "gpu-locks"


def claim_gpus(n: int, gpus: list[str], lock_dir: Path,
               poll_seconds: float = 5.0) -> list[tuple[int, IO]]:
    """(index into `gpus`, open lock file) of the first `n` GPUs whose lock files no other
    process holds an exclusive flock on; waits, holding none, until `n` are free at once
    (two runs each holding part of what they need would wait for each other forever). The
    kernel drops a lock when its process ends, however it ends: a killed run frees its GPUs."""
    import fcntl

    lock_dir.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        held: list[tuple[int, IO]] = []
        for index, gpu in enumerate(gpus):
            f = open(lock_dir / f"gpu-{gpu.replace('/', '_')}.lock", "a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            held.append((index, f))
            if len(held) == n:
                log.info("using GPU %s (claimed in %s)",
                         ", ".join(gpus[i] for i, _ in held), lock_dir)
                return held
        for _, f in held:
            f.close()
        if not waited:
            log.info("fewer than %d of the %d GPUs are free (%s): waiting", n, len(gpus),
                     lock_dir)
            waited = True
        time.sleep(poll_seconds)


def cpu_has_amx() -> bool:
    """bf16 matrix tiles (Intel AMX), where bf16 matmuls beat fp32 (docs/speed.md)."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def use_bf16(amp: str, device: torch.device) -> bool:
    if amp == "fp32":
        return False
    if amp == "bf16":
        return True
    return device.type == "cuda" and torch.cuda.is_bf16_supported() or (
        device.type == "cpu" and cpu_has_amx())


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# oneDNN JIT-compiles a bf16 matmul kernel per shape and keeps 1,024 in a cache by default.
# A full-data epoch has over a hundred batch shapes and needs several thousand kernels, so
# with the default every epoch compiled them all again; this capacity keeps them once the
# first epoch has made them (docs/speed.md measures both). An environment value the user
# set wins.
ONEDNN_CACHE_CAPACITY = "16384"


def set_threads(n: int) -> None:
    """Torch's CPU threads (0: its default), and the oneDNN kernel cache's size. Call it
    before the first matmul: oneDNN reads the capacity when it first builds a kernel."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE_CAPACITY)
    if n > 0:
        torch.set_num_threads(n)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: the peak memory allocated to tensors (the caching allocator reserves somewhat
    more, and the CUDA context adds its own); CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return max_rss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def max_rss_mb(ru_maxrss: int, platform: str = sys.platform) -> float:
    """getrusage's ru_maxrss in MB: macOS counts bytes, Linux and the BSDs KiB."""
    return ru_maxrss / 2**20 if platform == "darwin" else ru_maxrss / 1024


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
