"""nmt/device.py: peak memory in the same unit on every platform and device."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from nmt import device


def test_max_rss_is_kib_on_linux_and_bytes_on_macos():
    assert device.max_rss_mb(2048, platform="linux") == 2.0
    assert device.max_rss_mb(2 * 2**20, platform="darwin") == 2.0


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_cpu_peak_is_the_kernels_high_water_mark():
    status = Path("/proc/self/status").read_text()
    hwm_kib = next(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith("VmHWM:"))
    # getrusage and /proc count slightly different pages; a unit error would be 1024x off
    assert device.peak_memory_mb(torch.device("cpu")) == pytest.approx(hwm_kib / 1024, abs=16)


def test_cuda_peak_is_max_allocated_not_max_reserved(monkeypatch):
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda dev=None: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda dev=None: 4 * 2**30)
    assert device.peak_memory_mb(torch.device("cuda")) == 3 * 1024
