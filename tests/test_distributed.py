"""Data-parallel training for real: the train stage under torchrun, 2 gloo processes on
this CPU (nmt/distributed.py, docs/scale.md).

Two processes with accum_steps 1 take the same 2 batches a step as one process with
accum_steps 2, so without dropout their losses and weights must agree up to float
rounding. Tolerances: per-step train loss within 1e-4 (steps.tsv rounds to 5 decimals),
final weights within 1e-4 absolute. Measured: equal to the bit, since with 2 ranks each
rank's gradient is scaled by 2 and DDP's mean halves the sum, both exact in floating
point (docs/scale.md); more ranks or another reduction order may differ in the last
bits. Every file the stage writes must come from rank 0.

With dropout (0.1) each rank draws its own masks, from its own stream; a run whose
torchrun agent is killed with kill -9 mid-epoch loses its ranks within seconds, and
resumed it ends bit-identical to an unbroken 2-process run. Validation split over 3
ranks gives the one-process validation loss within 1e-6.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import torch.multiprocessing as mp

from nmt import checkpoints, distributed, params as P
from nmt.batching import collate
from nmt.model import ModelConfig
from nmt.tokenizer import SpecialIds
from nmt.trainer import Trainer, seed_everything

from . import e2e

pytestmark = pytest.mark.e2e

# 2 epochs of ~15 steps, 2 batches a step; an odd batch count gives the last window
# one batch, so rank 1 trains on a stand-in batch with weight 0 there.
PARAMS = {"train": {"epochs": 2, "batch_tokens": 300, "save_every_steps": 1,
                    "keep_checkpoints": 2, "num_threads": 1}}
LOSS_TOL = 1e-4
WEIGHT_TOL = 1e-4
DROPOUT = {"accum_steps": 1, "nproc_per_node": 2}
ORPHAN_SECONDS = 5  # a rank must be gone this soon after its agent

# Loaded into every Python process of a run (launcher, torchrun, ranks): logs each file
# the project's atomic writers create, with the writer's RANK ("-" outside torchrun).
SITECUSTOMIZE = '''
import os
from nmt import fsio

def _logged(fn):
    def wrapper(path, *args, **kwargs):
        with open(os.environ["NMT_WRITES_LOG"], "a") as f:
            f.write(f"{os.environ.get('RANK', '-')} {path}\\n")
        return fn(path, *args, **kwargs)
    return wrapper

fsio.atomic_path = _logged(fsio.atomic_path)
fsio.atomic_dir = _logged(fsio.atomic_dir)

# The torch random state at each process's first dropout mask: the ranks' streams.
if os.environ.get("NMT_RNG_LOG"):
    import hashlib
    import torch
    from nmt import kernels

    _dropout = kernels.cpu_dropout

    def _first_mask(x, p):
        if not _first_mask.seen:
            _first_mask.seen = True
            state = hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()
            with open(os.environ["NMT_RNG_LOG"], "a") as f:
                f.write(f"{os.environ.get('RANK', '-')} {state}\\n")
        return _dropout(x, p)

    _first_mask.seen = False
    kernels.cpu_dropout = _first_mask
'''


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny project after prepare and subsample; each run trains in its own copy."""
    project = e2e.make_project(tmp_path_factory.mktemp("ddp") / "proj", overrides=PARAMS)
    e2e.use_synthetic_corpus(project)
    e2e.dvc("repro", "subsample", cwd=project)
    hook = project / "hook"  # git-ignored by nothing, but no stage reads it
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return project


def copy_with(prepared: Path, dest: Path, train: dict, model: dict | None = None) -> Path:
    shutil.copytree(prepared, dest, symlinks=True)
    e2e.write_params(dest, {"train": train, "model": model or {}})
    return dest


def stage(project: Path) -> subprocess.Popen:
    env = e2e.env()
    env.update(PYTHONPATH=f"{project / 'hook'}{os.pathsep}{project}",
               NMT_WRITES_LOG=str(project / "writes.log"), NMT_RNG_LOG=str(project / "rng.log"))
    return subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def train(project: Path) -> str:
    proc = stage(project)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    return err


def losses(project: Path) -> list[float]:
    with open(project / "data/train/log/steps.tsv") as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f, delimiter="\t")]


def weights(project: Path) -> dict[str, torch.Tensor]:
    return checkpoints.load(project / "data/train/state/state.pt")["model"]


def writers(project: Path) -> set[str]:
    return {line.split()[0] for line in (project / "writes.log").read_text().splitlines()}


@pytest.fixture(scope="module")
def runs(prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    one = copy_with(prepared, root / "one", {"accum_steps": 2})
    two = copy_with(prepared, root / "two", {"accum_steps": 1, "nproc_per_node": 2})
    logs = {"one": train(one), "two": train(two)}
    return one, two, logs


def test_two_processes_match_one_with_the_same_global_batch(runs):
    one, two, logs = runs
    a, b = losses(one), losses(two)
    assert len(a) == len(b) > 20
    loss_diff = max(abs(x - y) for x, y in zip(a, b))
    wa, wb = weights(one), weights(two)
    weight_diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    scale = max(float(w.abs().max()) for w in wa.values())
    print(f"\n1 vs 2 processes over {len(a)} steps: max |loss diff| {loss_diff:.2e}, "
          f"max |weight diff| {weight_diff:.2e} (largest weight {scale:.2f})")
    assert loss_diff <= LOSS_TOL
    assert weight_diff <= WEIGHT_TOL
    m1 = json.loads((one / "data/train/metrics.json").read_text())
    m2 = json.loads((two / "data/train/metrics.json").read_text())
    assert (m1["ranks"], m2["ranks"]) == (1, 2)
    assert m1["global_batch_tokens"] == m2["global_batch_tokens"] == 600
    assert m1["steps"] == m2["steps"] and m1["tokens_seen"] == m2["tokens_seen"]
    assert "global batch: 300 tokens x 1 accumulation x 2 rank(s) = 600 tokens" in logs["two"]


def test_only_rank_0_writes(runs):
    one, two, _ = runs
    assert writers(one) == {"-"}  # one process: no torchrun, no RANK
    assert writers(two) == {"0"}
    epochs = sorted(p.name for p in (two / "data/train/checkpoints").glob("epoch_*.pt"))
    assert epochs == ["epoch_001.pt", "epoch_002.pt"]


def test_two_processes_validate_as_one(runs):
    """Each rank validates half the batches; the summed loss is the one-process loss."""
    one, two, _ = runs
    val = [[float(r["val_loss"]) for r in csv.DictReader(open(p / "data/train/log/epochs.tsv"),
                                                           delimiter="\t")] for p in (one, two)]
    assert len(val[0]) == 2 and val[0] == val[1]


@pytest.fixture(scope="module")
def dropout_run(prepared, tmp_path_factory):
    """An unbroken 2-process run with dropout 0.1."""
    run = copy_with(prepared, tmp_path_factory.mktemp("dropout") / "two", DROPOUT,
                    {"dropout": 0.1})
    train(run)
    return run


def test_ranks_draw_different_dropout_masks(dropout_run):
    """At its first dropout mask each rank's torch stream is its own (one stream for both
    would give both ranks the same masks, on different data)."""
    first = dict(line.split() for line in (dropout_run / "rng.log").read_text().splitlines())
    assert sorted(first) == ["0", "1"] and first["0"] != first["1"]
    saved = checkpoints.load(dropout_run / "data/train/state/state.pt")["rng"]
    assert len(saved) == 2 and not torch.equal(saved[0]["torch"], saved[1]["torch"])


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_agent_killed_takes_its_ranks_and_the_run_resumes_bit_identical(prepared, dropout_run,
                                                                        tmp_path):
    """kill -9 of the torchrun agent mid-epoch: its ranks die within seconds (they used to
    train on, orphaned), the launcher fails, and a rerun resumes every rank's random state
    and ends where the unbroken run ends, dropout on, bit for bit."""
    killed = copy_with(prepared, tmp_path / "killed", DROPOUT, {"dropout": 0.1})
    proc = stage(killed)
    state = killed / "data/train/state/state.pt"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # mid-epoch 1: a few step saves after the first
        if state.exists() and (killed / "writes.log").read_text().count("state.pt") >= 5:
            break
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    [agent] = psutil.Process(proc.pid).children()
    ranks = agent.children()
    assert len(ranks) == 2
    os.kill(agent.pid, 9)
    t0 = time.monotonic()
    while not all(gone(r.pid) for r in ranks):
        assert time.monotonic() - t0 < ORPHAN_SECONDS, "ranks outlived their torchrun agent"
        time.sleep(0.05)
    print(f"\nranks gone {time.monotonic() - t0:.2f} s after kill -9 of the agent")
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    saved = checkpoints.load(state)["progress"]
    assert saved["epoch"] == 1 and 0 < saved["step"]

    log = train(killed)
    assert f"resuming from {state.relative_to(killed)}: epoch 1" in log
    assert losses(killed) == losses(dropout_run)
    wk, wd = weights(killed), weights(dropout_run)
    diff = max(float((wk[k] - wd[k]).abs().max()) for k in wd)
    print(f"killed and resumed vs unbroken, 2 processes, dropout 0.1: max |weight diff| "
          f"{diff:.2e} over {len(losses(killed))} steps")
    assert all(torch.equal(wk[k], wd[k]) for k in wd)


def test_killing_the_launcher_ends_torchrun_and_ranks(prepared, tmp_path):
    """kill -9 of the stage process that launched torchrun (what dvc's death does to it):
    torchrun gets SIGTERM from the kernel and stops its ranks."""
    project = copy_with(prepared, tmp_path / "launcher", DROPOUT)
    proc = stage(project)
    deadline = time.monotonic() + 300
    while len(ranks := [p for p in psutil.Process(proc.pid).children(recursive=True)
                        if "stages.train" in " ".join(p.cmdline())]) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.05)
    [agent] = psutil.Process(proc.pid).children()
    os.kill(proc.pid, 9)
    proc.wait()  # not communicate(): its pipes stay open while torchrun or a rank lives
    t0 = time.monotonic()
    while not all(gone(p.pid) for p in [agent, *ranks]):
        assert time.monotonic() - t0 < ORPHAN_SECONDS, "torchrun outlived its launcher"
        time.sleep(0.05)
    proc.communicate()


# ---- validation split across ranks ----------------------------------------------------------
def tiny_trainer(tmp: Path) -> Trainer:
    """A 2-layer model and 7 validation batches of different shapes (uneven shares)."""
    p = P.from_dict({"model": {"d_model": 16, "nhead": 2, "dim_feedforward": 32,
                               "num_encoder_layers": 1, "num_decoder_layers": 1},
                     "schedule": {"name": "constant"}, "train": {"epochs": 1, "amp": "fp32"}})
    p.validate()
    cfg = ModelConfig.from_params(p.model, 40, 40, True, 0)
    gen = torch.Generator().manual_seed(0)
    val = []
    for n in range(1, 8):
        pairs = [(torch.randint(4, 40, (n + k,), generator=gen).tolist(),
                  torch.randint(4, 40, (2 * n - k + 1,), generator=gen).tolist())
                 for k in range(n)]
        val.append(collate(pairs, SpecialIds(pad=0, bos=2, eos=3)))
    seed_everything(0)
    return Trainer(p, cfg, val, val, tmp / "state", "fp")


def _validate_as_rank(r: int, world: int, port: int, tmp: Path) -> None:
    os.environ.update(RANK=str(r), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init(torch.device("cpu"))
    trainer = tiny_trainer(tmp / f"rank{r}")
    seen = []
    loss_on = trainer.loss_on
    trainer.loss_on = lambda batch, *args: seen.append(batch) or loss_on(batch, *args)
    loss = trainer.evaluate()
    (tmp / f"loss{r}").write_text(f"{loss!r} {len(seen)}")
    distributed.finish()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_validation_split_over_three_ranks_equals_one_process(tmp_path, one_torch_thread):
    """7 batches over 3 ranks (3, 2 and 2 each): the all-reduced loss is the one-process
    loss within 1e-6 (only the order of the float64 sums differs)."""
    one = tiny_trainer(tmp_path / "one").evaluate()
    mp.spawn(_validate_as_rank, args=(3, free_port(), tmp_path), nprocs=3)
    losses_, batches = zip(*((float(loss), int(n)) for loss, n in (
        (tmp_path / f"loss{r}").read_text().split() for r in range(3))))
    assert batches == (3, 2, 2)  # each rank validated its share only
    assert losses_[0] == losses_[1] == losses_[2]  # one decision: the same number everywhere
    print(f"\n3 ranks vs 1: validation loss {losses_[0]!r} vs {one!r}")
    assert abs(losses_[0] - one) <= 1e-6


def test_batch_tokens_auto_trains_with_the_probed_size(prepared, tmp_path):
    """The stage with train.batch_tokens: auto on this CPU: the size is logged, trained with
    and recorded (this tiny corpus fits in one batch, so the whole set is the choice)."""
    auto = copy_with(prepared, tmp_path / "auto", {"batch_tokens": "auto", "epochs": 6})
    log = train(auto)
    metrics = json.loads((auto / "data/train/metrics.json").read_text())
    chosen = metrics["batch_tokens"]
    assert isinstance(chosen, int) and chosen > 300
    assert f"train.batch_tokens: auto chose {chosen} tokens on cpu" in log
    assert metrics["global_batch_tokens"] == chosen


# ---- each rank's random stream ---------------------------------------------------------------
def test_rank_0_keeps_the_run_stream_and_other_ranks_get_their_own(monkeypatch):
    """Rank 0 (and a one-process run) continues the seeded stream untouched; rank r > 0
    reseeds from (seed, r): reproducible, and different for every rank and seed."""
    def next_draw(rank: int, seed: int = 7) -> torch.Tensor:
        monkeypatch.setenv("RANK", str(rank))
        seed_everything(seed)
        distributed.seed_rank(seed)
        return torch.rand(8)

    seed_everything(7)
    expected = torch.rand(8)
    assert torch.equal(next_draw(0), expected)
    assert torch.equal(next_draw(1), next_draw(1))
    draws = [next_draw(r) for r in range(4)] + [next_draw(1, seed=8)]
    assert len({tuple(d.tolist()) for d in draws}) == 5
