"""One GPU per run: the flock-based claim behind `dvc queue start -j N` (docs/scale.md),
on simulated device lists (this machine has no GPU)."""
from __future__ import annotations

import fcntl
import multiprocessing
import subprocess
import threading
from pathlib import Path

import pytest
import torch

from nmt import device as devices, distributed
from nmt.params import Train


def hold(lock_dir: Path, gpu: str):
    """Another run's claim on `gpu`: an open file with an exclusive flock."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    f = open(lock_dir / f"gpu-{gpu}.lock", "a")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return f


def test_claims_the_first_gpu_no_other_run_holds(tmp_path):
    other = hold(tmp_path, "0")
    [(first, f1)] = devices.claim_gpus(1, ["0", "1", "2"], tmp_path)
    [(second, f2)] = devices.claim_gpus(1, ["0", "1", "2"], tmp_path)
    assert (first, second) == (1, 2)
    f1.close()  # that run ended: its GPU is free again
    [(third, f3)] = devices.claim_gpus(1, ["0", "1", "2"], tmp_path)
    assert third == 1
    for f in (other, f2, f3):
        f.close()


def test_waits_while_every_gpu_is_claimed(tmp_path):
    held = [hold(tmp_path, g) for g in ("0", "1")]
    threading.Timer(0.3, held[1].close).start()
    [(index, f)] = devices.claim_gpus(1, ["0", "1"], tmp_path, poll_seconds=0.05)
    assert index == 1
    f.close()
    held[0].close()


def test_a_multi_gpu_run_claims_several_free_ones(tmp_path):
    other = hold(tmp_path, "1")
    held = devices.claim_gpus(2, ["0", "1", "2", "3"], tmp_path)
    assert [i for i, _ in held] == [0, 2]
    for f in (other, *(f for _, f in held)):
        f.close()


def test_waiting_for_several_it_holds_none(tmp_path, monkeypatch):
    """Two 2-GPU runs on 2 GPUs, each holding one while waiting for the other, would wait
    forever: a run that cannot get all it needs lets go of what it got."""
    other = hold(tmp_path, "0")
    waits = []

    def sleep(seconds):
        hold(tmp_path, "1").close()  # free while the run waits: it kept nothing
        waits.append(seconds)
        other.close()

    monkeypatch.setattr(devices.time, "sleep", sleep)
    held = devices.claim_gpus(2, ["0", "1"], tmp_path, poll_seconds=0.01)
    assert [i for i, _ in held] == [0, 1] and waits == [0.01]
    for _, f in held:
        f.close()


def test_torchrun_gets_the_free_gpus_of_the_machine(monkeypatch, tmp_path):
    """The launcher of a 2-process run on a 4-GPU machine where GPU 0 is another run's:
    torchrun sees GPUs 1 and 2 (its ranks' cuda:0 and cuda:1)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv(devices.GPU_LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    other = hold(tmp_path, "0")
    seen = {}

    def run(cmd, env, **_):
        seen.update(cmd=cmd, gpus=env["CUDA_VISIBLE_DEVICES"])
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(distributed.subprocess, "run", run)
    with pytest.raises(SystemExit) as e:
        distributed.launch(["torchrun", "-m", "stages.train"], Train(nproc_per_node=2))
    assert e.value.code == 0 and seen["gpus"] == "1,2"
    other.close()


def _claim_and_hold(lock_dir: Path, results, release) -> None:
    [(index, _)] = devices.claim_gpus(1, ["0", "1", "2", "3"], lock_dir)
    results.put(index)
    release.wait()  # hold the claim, as a training run does, until the test is done


def test_concurrent_runs_each_get_their_own_gpu(tmp_path):
    """Four processes claim at once (like four queue workers' stages): each GPU once."""
    ctx = multiprocessing.get_context("fork")
    results, release = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_claim_and_hold, args=(tmp_path, results, release))
             for _ in range(4)]
    for p in procs:
        p.start()
    indexes = sorted(results.get(timeout=60) for _ in procs)
    release.set()
    for p in procs:
        p.join()
    assert indexes == [0, 1, 2, 3]


@pytest.fixture
def four_gpus(monkeypatch, tmp_path):
    """torch believes it sees 4 GPUs; set_device calls are recorded."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(devices, "_claimed", {})
    monkeypatch.setenv(devices.GPU_LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    return chosen


def test_cuda_device_claims_by_the_machine_wide_id(four_gpus, monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    other = hold(tmp_path, "4")
    assert devices.cuda_device() == torch.device("cuda", 1)
    assert devices.cuda_device() == torch.device("cuda", 1)  # claimed once per process
    assert four_gpus == [1, 1]
    with pytest.raises(BlockingIOError):  # GPU 5 is this process's now
        hold(tmp_path, "5")
    other.close()


def test_torchrun_ranks_take_their_local_rank_without_a_claim(four_gpus, monkeypatch, tmp_path):
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert devices.cuda_device() == torch.device("cuda", 2)
    assert four_gpus == [2] and not list(tmp_path.iterdir())


def test_lock_folder_is_the_projects_even_from_a_queued_copy(monkeypatch, tmp_path):
    monkeypatch.delenv(devices.GPU_LOCK_DIR_ENV, raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert devices.gpu_lock_dir() == tmp_path / ".dvc" / "tmp" / "gpu-locks"
