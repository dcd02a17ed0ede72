"""`make gpu-check` on a machine without CUDA: one line saying so, a non-zero exit, nothing
run and nothing written."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_refuses_cleanly_without_cuda(tmp_path):
    summary = REPO / "reports" / "gpu-check.txt"
    before = summary.read_bytes() if summary.exists() else None
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU visible, even on a GPU machine
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA device"), lines
    assert (summary.read_bytes() if summary.exists() else None) == before
    assert list(tmp_path.iterdir()) == []
