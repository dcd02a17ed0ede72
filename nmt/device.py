"""Device choice, mixed precision and the machine's description."""
from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path

import torch

from .errors import UserError


def pick(preference: str = "auto") -> torch.device:
    """auto: CUDA when available, else CPU."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: 'cuda' asked for, but no CUDA device is available")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def cpu_has_amx() -> bool:
    """bf16 matrix tiles (Intel AMX): there bf16 matmuls run ~2.5x faster than fp32."""
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


def set_threads(n: int) -> None:
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
    more, and the CUDA context adds about 0.5 GB); CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return max_rss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def max_rss_mb(ru_maxrss: int, platform: str = sys.platform) -> float:
    """getrusage's ru_maxrss in MB: macOS counts bytes, Linux and the BSDs KiB."""
    return ru_maxrss / 2**20 if platform == "darwin" else ru_maxrss / 1024


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
