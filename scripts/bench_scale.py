"""How prepare, subsample and a training epoch's set-up grow with the corpus: wall time,
CPU seconds and peak resident memory at several sizes of a synthetic corpus.

    .venv/bin/python scripts/bench_scale.py [--pairs 29000 1000000 4500000] [--work DIR]

For each size N the corpus is Multi30k's training set repeated (and cut) to N pairs,
with Multi30k's own validation and test sets, in a project folder of its own, read
through `data.corpus: files` and otherwise the default params.yaml (subsample.fraction
1.0, so training sees all N pairs). Then, each in a process of its own:

- prepare: `python -m stages.prepare` (reading, normalising, filtering, SentencePiece
  on a sample of at most tokenizer.input_sentence_size sentences, writing);
- subsample: `python -m stages.subsample`;
- setup: what the train stage does before the model exists, with its own functions
  (nmt/training.py's `encoded_pairs` and `batched`): encode the training and
  validation pairs, drop those over model.max_positions, batch them; then pad every
  batch once, as one epoch's loop does (`epoch pass`).

Peak RSS is the process's (getrusage of the child, so the interpreter and torch count
too). Multi30k comes from $NMT_DATA_MIRROR or data/raw (nmt/corpus.py fetches it).
Wall times depend on what else runs: the table says the machine's load average.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MULTI30K_TRAIN = 29_000


def corpus(work: Path, pairs: int) -> Path:
    """A project folder whose corpus/ holds Multi30k's training pairs repeated to `pairs`."""
    from nmt import corpus as nmt_corpus, fsio

    project = work / f"pairs-{pairs}"
    folder = project / "corpus"
    if (folder / "done").exists():
        return project
    folder.mkdir(parents=True, exist_ok=True)
    m30k = nmt_corpus.load_corpus(nmt_corpus.Data(), REPO / "data" / "raw")
    for split, data in m30k.splits.items():
        for lang, lines in (("de", data.src), ("en", data.tgt)):
            path = folder / f"{split}.{lang}"
            with open(path, "w", encoding="utf-8") as f:
                if split != "train":
                    f.write("".join(line + "\n" for line in lines))
                    continue
                block = "".join(line + "\n" for line in lines)
                for _ in range(pairs // len(lines)):
                    f.write(block)
                f.write("".join(line + "\n" for line in lines[:pairs % len(lines)]))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["corpus"] = "files"
    params["data"]["files"] = {f"{split}_{side}": f"corpus/{split}.{lang}"
                               for split in ("train", "val", "test")
                               for side, lang in (("src", "de"), ("tgt", "en"))}
    params["subsample"]["fraction"] = 1.0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fsio.write_text(folder / "done", "")
    return project


def measured(cmd: list[str], cwd: Path) -> dict:
    """Run `cmd` and return its wall seconds, CPU seconds (user + sys) and peak RSS (MB)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"error: {' '.join(cmd)} failed in {cwd}:\n{output[-3000:]}")
    result = {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
              "peak_rss_mb": round(usage.ru_maxrss / 1024)}
    for line in output.splitlines():  # the setup's own figures
        if line.startswith("{"):
            result.update(json.loads(line))
    return result


def setup(project: Path) -> None:
    """The train stage's set-up before the model (nmt.training's data steps, as
    `training.setup` runs them), timed in parts; one JSON line out."""
    os.chdir(project)
    import numpy as np

    from nmt import paths, training
    from nmt.batching import epoch_order
    from nmt.params import load
    from nmt.tokenizer import Tokenizers

    params = load()
    times = {}
    t0 = time.perf_counter()
    tok = Tokenizers.load(paths.PREPARED)
    train, val = training.encoded_pairs(tok, training.model_config(params, tok),
                                        (paths.SUBSAMPLED / "train.src",
                                         paths.SUBSAMPLED / "train.tgt"))
    times["encode_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    batches, _ = training.batched(params, tok.special, train, val)
    padding = batches.padding()
    times["batch_s"] = time.perf_counter() - t0
    rss_setup = _peak_rss_mb()
    t0 = time.perf_counter()
    tokens = sum(batches[i].n_tgt_tokens for i in epoch_order(len(batches), params.seed, 1))
    times["epoch_pass_s"] = time.perf_counter() - t0
    held = sum(a.nbytes for s in train for a in (s.ids, s.starts))
    print(json.dumps({**{k: round(v, 1) for k, v in times.items()},
                      "setup_peak_rss_mb": rss_setup, "pairs": len(train[0]),
                      "batches": len(batches), "padding": round(padding, 4),
                      "target_tokens": int(tokens), "encoded_mb": round(held / 2**20),
                      "ids_dtype": str(np.dtype(train[0].ids.dtype))}))


def _peak_rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, nargs="+", default=[29_000, 1_000_000, 4_500_000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/nmt-bench-scale"),
                    help="where the corpora and their projects go (about 1 GB per million pairs)")
    ap.add_argument("--setup-only", type=Path, help=argparse.SUPPRESS)  # the child's mode
    args = ap.parse_args()
    if args.setup_only:
        return setup(args.setup_only)
    sys.path.insert(0, str(REPO))
    py = sys.executable
    rows = []
    for pairs in args.pairs:
        project = corpus(args.work, pairs)
        row = {"pairs": pairs, "load_before": round(os.getloadavg()[0], 1)}
        for stage, cmd in (("prepare", [py, "-m", "stages.prepare"]),
                           ("subsample", [py, "-m", "stages.subsample"]),
                           ("setup", [py, str(Path(__file__).resolve()), "--setup-only",
                                      str(project)])):
            row[stage] = measured(cmd, project)
            print(f"{pairs} pairs, {stage}: {row[stage]}", flush=True)
        row["load_after"] = round(os.getloadavg()[0], 1)
        rows.append(row)
    out = args.work / "scale.json"
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n| pairs | stage | wall s | CPU s | peak RSS MB |\n|--:|---|--:|--:|--:|")
    for row in rows:
        for stage in ("prepare", "subsample", "setup"):
            r = row[stage]
            print(f"| {row['pairs']:,} | {stage} | {r['wall_s']} | {r['cpu_s']} | "
                  f"{r['peak_rss_mb']:,} |")
    print(f"\n(written to {out}; 1-minute load average before/after each size: "
          + ", ".join(f"{r['load_before']}/{r['load_after']}" for r in rows) + ")")


if __name__ == "__main__":
    main()
