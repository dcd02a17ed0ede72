"""Validation on 2 processes: each rank validating the whole set (as before issue 26)
against each validating its half, sums all-reduced (Trainer.evaluate now).

    .venv/bin/python scripts/bench_validation.py PROJECT [--ranks 2] [--repeats 3]

PROJECT is a folder with data/prepared (a `dvc repro prepare` of the default params: the
1,014 Multi30k validation pairs). The default model (params.yaml), untrained: the
cost of a forward pass does not depend on the weights. Ranks are gloo processes on this
CPU with one thread each, as `train.nproc_per_node: 2` runs them here.

Prints, per way, each rank's CPU seconds (its process time: what the rank's own device
spends, the figure that does not depend on what else runs) and the wall time of the
slowest rank, and the loss both ways (they must agree).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]


def rank_main(rank: int, ranks: int, port: int, project: Path, repeats: int, out: Path) -> None:
    sys.path.insert(0, str(REPO))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(ranks), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from nmt import distributed, paths, training
    from nmt.params import load
    from nmt.tokenizer import Tokenizers
    from nmt.trainer import Trainer

    os.chdir(project)
    params = load(REPO / "params.yaml")
    params = dataclasses.replace(params, schedule=dataclasses.replace(params.schedule,
                                                                      name="constant"))
    device = torch.device("cpu")
    distributed.init(device)
    tok = Tokenizers.load(paths.PREPARED)
    cfg = training.model_config(params, tok)
    train, val = training.encoded_pairs(tok, cfg, (paths.PREPARED / "train.src",
                                                   paths.PREPARED / "train.tgt"))
    _, batches = training.batched(params, tok.special, train, val)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(params, cfg, batches, batches, Path(tmp) / "state", "bench",
                          device=device)
    trainer.evaluate()  # warm-up: kernels, allocator
    share = distributed.rank_share
    result = {}
    for way in ("whole set on every rank", "1/N each, sums all-reduced"):
        distributed.rank_share = (lambda items: items) if way.startswith("whole") else share
        dist.barrier()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(repeats):
            loss = trainer.evaluate()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        dist.barrier()
        result[way] = {"cpu_s": cpu / repeats, "wall_s": wall / repeats, "loss": loss}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    distributed.finish()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("project", type=Path)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        mp.spawn(rank_main, args=(args.ranks, port, args.project.resolve(), args.repeats, out),
                 nprocs=args.ranks)
        ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(args.ranks)]
    print(f"validation of {args.project / 'data/prepared/val.src'} on {args.ranks} gloo ranks, "
          f"1 thread each, mean of {args.repeats}; load average {os.getloadavg()[0]:.1f}")
    for way in ranks[0]:
        cpu = [r[way]["cpu_s"] for r in ranks]
        wall = max(r[way]["wall_s"] for r in ranks)
        print(f"  {way}: CPU s per rank {', '.join(f'{c:.2f}' for c in cpu)}; wall {wall:.2f} s; "
              f"loss {ranks[0][way]['loss']:.6f}")
    whole, split = (list(ranks[0])[i] for i in (0, 1))
    cpu_speedup = (sum(r[whole]["cpu_s"] for r in ranks) / sum(r[split]["cpu_s"] for r in ranks))
    wall_speedup = (max(r[whole]["wall_s"] for r in ranks) / max(r[split]["wall_s"] for r in ranks))
    print(f"  speed-up: {cpu_speedup:.2f}x in CPU seconds per rank, {wall_speedup:.2f}x wall")


if __name__ == "__main__":
    main()
