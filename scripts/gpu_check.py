"""`make gpu-check`: what this project claims on a CUDA machine, checked in one go.

    make gpu-check            # on a machine with an NVIDIA GPU and the CUDA build of torch

Steps, each timed, in a throwaway clone of this repository's last commit (so the
workspace and its DVC outputs stay as they are):
1. the CUDA tests (`pytest -m cuda`: device choice, bf16 autocast training, decoding,
   the memory probe, per-rank random streams on the GPU);
2. the default params trained for 2 epochs with `train.amp: auto`, which must train
   in bf16 autocast on the GPU (data/train/metrics.json says so), then the rest of the
   pipeline;
3. the bench's training and decoding rows (`nmtlab bench`, short);
4. two queued experiments started at once (`dvc queue start -j 2`): both must finish,
   and with several GPUs each must have claimed its own (nmt/device.py).
It prints what each step printed at its end and a summary, writes the summary to
reports/gpu-check.txt of the workspace, and exits non-zero when a step failed. On a
machine without CUDA it stops at once with one line saying so.

The corpus comes from $NMT_DATA_MIRROR (or ../shared/data/multi30k, or the
workspace's data/raw), as `make repro` takes it: the GPU machine may be offline.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SUMMARY = ROOT / "reports" / "gpu-check.txt"


def cuda_or_exit() -> str:
    """The GPU's name; exits with one line when there is none."""
    import torch

    if not torch.cuda.is_available():
        build = "the CPU build of torch" if torch.version.cuda is None else (
            f"torch built for CUDA {torch.version.cuda}, but no GPU is visible")
        sys.exit(f"gpu-check: no CUDA device on this machine ({build}); run it where "
                 f"`nvidia-smi` lists a GPU, after `make setup TORCH=cuda`")
    return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"


def mirror() -> dict[str, str]:
    """The environment's corpus mirror, as the Makefile sets it."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1")
    for candidate in (os.environ.get("NMT_DATA_MIRROR"), ROOT.parent / "shared/data/multi30k",
                      ROOT / "data" / "raw"):
        if candidate and Path(candidate, "train.de.gz").is_file():
            env["NMT_DATA_MIRROR"] = str(Path(candidate).resolve())
            break
    return env


class Steps:
    """Runs the steps in order, keeps their outcome lines."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.lines: list[str] = []
        self.failed = False

    def run(self, name: str, cmd: list[str], cwd: Path, tail: int = 15) -> str:
        print(f"\n== {name}: {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=self.env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        out = proc.stdout + proc.stderr
        print("\n".join(out.rstrip().splitlines()[-tail:]), flush=True)
        verdict = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        self.failed |= proc.returncode != 0
        self.lines.append(f"{name}: {verdict}, {seconds:.0f} s")
        return out

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.failed |= not ok
        self.lines.append(f"{name}: {'ok' if ok else 'FAILED'}: {detail}")


def train_two_epochs(steps: Steps, project: Path) -> None:
    dvc = str(BIN / "dvc")
    steps.run("pipeline, 2 epochs, amp auto", [dvc, "exp", "run", "-n", "gpu-2-epochs",
                                               "-S", "train.epochs=2"], project)
    metrics_path = project / "data" / "train" / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    steps.check("bf16 autocast on the GPU", metrics.get("bf16") is True and "gpu_hours" in metrics,
                f"device {metrics.get('device')}, bf16 {metrics.get('bf16')}, "
                f"{metrics.get('tokens_per_s')} tokens/s, best val loss "
                f"{metrics.get('best_val_loss')}")


def queue_two(steps: Steps, project: Path, gpus: int) -> None:
    dvc = str(BIN / "dvc")
    for seed in (2, 3):
        steps.run(f"queue seed {seed}", [dvc, "exp", "run", "--queue", "-n", f"gpu-seed{seed}",
                                         "-S", f"seed={seed}", "-S", "train.epochs=1"], project)
    steps.run("two queued runs at once", [str(BIN / "nmtlab"), "hypotheses", "start", "-j", "2"],
              project)
    claimed = []
    for seed in (2, 3):
        log = subprocess.run([dvc, "queue", "logs", f"gpu-seed{seed}"], cwd=project,
                             env=steps.env, capture_output=True, text=True).stdout
        claimed += re.findall(r"using GPU (\d+)", log)
    if gpus > 1:
        steps.check("each queued run its own GPU", len(set(claimed)) == 2,
                    f"claimed GPUs {claimed}")
    else:
        steps.check("two queued runs share the one GPU", not claimed,
                    "one GPU: nothing to claim, both ran on it")


def main() -> None:
    gpu = cuda_or_exit()
    import torch

    env = mirror()
    steps = Steps(env)
    started = time.perf_counter()
    steps.run("CUDA tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-m", "cuda",
                             "tests/test_cuda.py"], ROOT)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        project = Path(tmp) / "project"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(project)], check=True)
        train_two_epochs(steps, project)
        steps.run("bench: training and decoding rows",
                  [str(BIN / "nmtlab"), "bench", "--steps", "20", "--sustained-steps", "0",
                   "--uncached-sentences", "50"], project, tail=40)
        queue_two(steps, project, torch.cuda.device_count())
        bench = project / "reports" / "bench.json"
        if bench.is_file():
            shutil.copy(bench, ROOT / "reports" / "bench-gpu.json")
    summary = [f"make gpu-check on {gpu}, torch {torch.__version__}, "
               f"{time.perf_counter() - started:.0f} s", *steps.lines]
    SUMMARY.parent.mkdir(exist_ok=True)
    SUMMARY.write_text("\n".join(summary) + "\n", encoding="utf-8")
    print("\n" + "\n".join(summary))
    sys.exit(1 if steps.failed else 0)


if __name__ == "__main__":
    main()
