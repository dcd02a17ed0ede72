"""What the report reads: DVC experiments, and the run records that outlive them.

A run record (reports/runs/<code version>/<name>.json, committed) keeps what the report
needs of one finished run: its params and their diff against the commit it ran from, the
training seed, the metrics (cost included), how it was produced (its provenance: device,
dtype, torch version, code fingerprint, effective batch_tokens, a budget stop), the epoch
log, and per-sentence BLEU statistics of the val and test translations (not the
translations). `collect` writes one per finished experiment that DVC knows; the report is
then built from the records alone, so it can be rebuilt, and a sweep continued, on a fresh
clone without the DVC cache or the experiment refs. One folder per code version, so a
sweep of new code (gelu-s1 again) leaves the records of the old one in place.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nmt import fsio, paths, trainlog
from nmt.errors import UserError

from ..hypotheses.catalogue import flatten
from .significance import STATS, sentence_stats

log = logging.getLogger("nmt.report")

RECORDS = Path("reports") / "runs"
RECORD_FORMAT = 2  # 2 added "provenance"; format 1 records (flat in RECORDS) still load
SPLITS = ("val", "test")
CODE_PATHS = ("nmt", "stages", "dvc.yaml")  # what makes two commits' runs comparable
SEED_KEY = "seed"  # the training seed: replicates differ in it alone
# How a run was produced: runs that differ in any of these are never pooled or paired. An
# early stop by patience is part of the configuration (train.early_stopping_patience).
PROVENANCE = ("device", "dtype", "torch", "code", "batch_tokens", "budget_stop")
UNRECORDED = "not recorded"
THREADS_RE = re.compile(r" \(\d+ threads?\)$")  # device names carry the thread count


@dataclass
class Run:
    """One finished run (an experiment or a commit's own results), or an unfinished one."""

    name: str
    rev: str  # the experiment's (or commit's) git sha
    baseline_rev: str  # the commit it ran from
    params: dict[str, Any]  # its params.yaml, nested
    base_params: dict[str, Any]  # the params.yaml of the commit it ran from
    train: dict[str, Any] = field(default_factory=dict)  # data/train/metrics.json
    bleu: dict[str, Any] = field(default_factory=dict)  # data/bleu/metrics.json
    timestamp: str = ""
    state: str = "success"  # success | failed | queued | running | no results
    error: str = ""
    code: str = ""  # hash of CODE_PATHS at the baseline commit
    epochs_tsv: str = ""
    sentences: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (N, 6) STATS
    refs_sha256: dict[str, str] = field(default_factory=dict)
    outputs_sha256: str = ""  # of the translations (kept for reference; nothing dedupes by it)
    recorded_provenance: dict[str, Any] = field(default_factory=dict)  # from its record

    @property
    def diff(self) -> dict[str, Any]:
        return params_diff(self.base_params, self.params)

    @property
    def seed(self) -> Any:
        return self.params.get(SEED_KEY)

    @property
    def arm_key(self) -> str:
        """The params diff without the training seed: replicates share it."""
        return json.dumps({k: v for k, v in self.diff.items() if k != SEED_KEY}, sort_keys=True)

    @property
    def provenance(self) -> dict[str, Any]:
        return self.recorded_provenance or provenance(self.train, self.code)

    @property
    def identity(self) -> str:
        """What makes two records the same run: code, provenance and every param (the seed
        included). A commit's own run restored by an experiment of the same params is one."""
        return json.dumps([self.code, self.provenance, self.params], sort_keys=True)


def provenance(train: dict[str, Any], code: str) -> dict[str, Any]:
    """PROVENANCE of a run from its train metrics: the device without the thread count
    (threads change the rounding, not what is learned), bf16 or fp32, torch.__version__,
    the train code's fingerprint (else `code`, the hash of the pipeline's code at the commit
    it ran from), the effective batch_tokens (what `auto` chose) and whether the time
    budget ended training. Fields the metrics do not have (older runs) are UNRECORDED."""
    dtype = train.get("bf16")
    return {"device": THREADS_RE.sub("", str(train.get("device", UNRECORDED))),
            "dtype": UNRECORDED if dtype is None else "bf16" if dtype else "fp32",
            "torch": str(train.get("torch", UNRECORDED)),
            "code": str(train.get("code") or code or UNRECORDED),
            "batch_tokens": train.get("batch_tokens", UNRECORDED),
            "budget_stop": train.get("stopped_by") == "budget"}


def params_diff(base: dict[str, Any], exp: dict[str, Any]) -> dict[str, Any]:
    """Changed keys only, dotted, with the experiment's value (None if it dropped the key)."""
    a, b = flatten(base), flatten(exp)
    return {k: b.get(k) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


# ---- DVC ---------------------------------------------------------------------------------
def parse_exp_show(rows: list[dict]) -> list[Run]:
    """Every commit with experiments (its own results included, when it has them) and every
    experiment, from `dvc exp show --json` output."""
    runs = []
    for row in rows:
        if row["rev"] == "workspace" or not row.get("experiments"):
            continue
        base_params = _params(row)
        commit = _run(f"commit-{row['rev'][:7]}", row, row["rev"], base_params)
        runs.append(commit)
        for exp in row["experiments"]:
            for rev in exp.get("revs") or []:
                run = _run(rev.get("name") or exp.get("name") or rev["rev"][:7], rev, row["rev"],
                           base_params)
                executor = exp.get("executor") or {}
                state = executor.get("state") or "success"
                if state != "success":
                    run.state, run.train, run.bleu = state, {}, {}
                    log_file = (executor.get("local") or {}).get("log")
                    if state == "failed" and log_file:
                        run.error = "; ".join(filter(None, [run.error, f"its log: {log_file}"]))
                runs.append(run)
    return runs


def _params(row: dict) -> dict:
    data = row.get("data") or {}
    return ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}


def _run(name: str, row: dict, baseline_rev: str, base_params: dict) -> Run:
    data = row.get("data") or {}
    metrics = data.get("metrics") or {}
    run = Run(name=name, rev=row["rev"], baseline_rev=baseline_rev, params=_params(row),
              base_params=base_params,
              train=(metrics.get(str(paths.TRAIN_METRICS)) or {}).get("data") or {},
              bleu=(metrics.get(str(paths.BLEU_METRICS)) or {}).get("data") or {},
              timestamp=data.get("timestamp") or "")
    if row.get("error"):
        run.state, run.train, run.bleu = "failed", {}, {}
        run.error = row["error"].get("msg", "")
    elif not run.train or not run.bleu:
        run.state = "no results"
    return run


def code_hash(rev: str, repo: str = ".") -> str:
    """One hash of the git trees of CODE_PATHS at `rev`: two commits with the same code and
    pipeline (records committed in between, say) give comparable runs."""
    proc = subprocess.run(["git", "rev-parse", *(f"{rev}:{p}" for p in CODE_PATHS)],
                          capture_output=True, text=True, cwd=repo)
    text = proc.stdout if proc.returncode == 0 else rev
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def read_outputs(run: Run, repo: str = ".") -> None:
    """Per-sentence statistics and the epoch log of a finished run, from the DVC cache at its
    commit; `run.error` says what could not be read."""
    from dvc.api import DVCFileSystem

    try:
        fs = DVCFileSystem(repo, rev=run.rev)
        run.epochs_tsv = fs.read_text(str(paths.TRAIN_LOG / trainlog.EPOCHS_FILE), encoding="utf-8")
        hyps_text = ""
        bleu = run.params.get("bleu") or {}
        for split in SPLITS:
            try:
                refs_text = fs.read_text(str(paths.PREPARED / f"{split}.tgt"), encoding="utf-8")
            except FileNotFoundError:
                continue  # no reference: no BLEU for this split
            hyps = fs.read_text(str(paths.TRANSLATIONS / f"{split}.hyp"), encoding="utf-8")
            hyps_text += hyps
            run.sentences[split] = sentence_stats(lines(hyps), lines(refs_text),
                                                  bleu.get("tokenize", "13a"),
                                                  bool(bleu.get("lowercase", False)))
            run.refs_sha256[split] = hashlib.sha256(refs_text.encode()).hexdigest()
        run.outputs_sha256 = hashlib.sha256(hyps_text.encode()).hexdigest()
    except Exception as e:  # noqa: BLE001 - any DVC/git failure is a note on this run
        run.error = f"its outputs are not in the DVC cache (dvc pull, or rerun): {e}"
        run.state = "no results"


def lines(text: str) -> list[str]:
    """Lines as the sacreBLEU CLI reads a file: line ends and trailing blanks dropped."""
    return [ln.rstrip() for ln in text.splitlines()]


# ---- records -----------------------------------------------------------------------------
def to_record(run: Run) -> dict[str, Any]:
    return {
        "format": RECORD_FORMAT,
        "name": run.name,
        "experiment": run.rev,
        "baseline": run.baseline_rev,
        "code": run.code,
        "timestamp": run.timestamp,
        "seed": run.seed,
        "params_diff": run.diff,
        "params": run.params,
        "base_params": run.base_params,
        "metrics": {"train": run.train, "bleu": run.bleu},
        "provenance": run.provenance,
        "outputs_sha256": run.outputs_sha256,
        "epochs_tsv": run.epochs_tsv,
        # sacreBLEU's statistics per sentence, one space-separated column per field
        "sentences": {split: {"refs_sha256": run.refs_sha256[split],
                              **{name: " ".join(map(str, col)) for name, col in
                                 zip(STATS, stats.T)}}
                      for split, stats in run.sentences.items()},
    }


def from_record(record: dict[str, Any], path: Path) -> Run:
    """The run of a record; format 1 (before provenance) gets its provenance from its
    metrics and code (provenance())."""
    if record.get("format") not in (1, RECORD_FORMAT):
        raise UserError(f"{path}: record format {record.get('format')!r}, this report reads "
                        f"1 and {RECORD_FORMAT}")
    try:
        run = Run(name=record["name"], rev=record["experiment"], baseline_rev=record["baseline"],
                  params=record["params"], base_params=record["base_params"],
                  train=record["metrics"]["train"], bleu=record["metrics"]["bleu"],
                  timestamp=record["timestamp"], code=record["code"],
                  epochs_tsv=record["epochs_tsv"], outputs_sha256=record["outputs_sha256"],
                  recorded_provenance=record.get("provenance") or {})
        if record["format"] == RECORD_FORMAT and set(run.recorded_provenance) != set(PROVENANCE):
            raise KeyError("provenance")
        for split, cols in record["sentences"].items():
            run.sentences[split] = np.array([[int(v) for v in cols[name].split()]
                                             for name in STATS], dtype=np.int64).T
            run.refs_sha256[split] = cols["refs_sha256"]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: not a run record ({type(e).__name__}: {e}); delete it and "
                        f"rerun `nmtlab report --collect` where its experiment is") from None
    return run


def record_path(run: Run, folder: Path = RECORDS) -> Path:
    """folder/<code version>/<name>.json."""
    return folder / run.code / f"{run.name}.json"


def load_records(folder: Path = RECORDS) -> list[Run]:
    """Every record under `folder` (one folder per code version; records directly in it,
    as the first sweep wrote them, load too)."""
    runs = []
    for path in sorted([*folder.glob("*.json"), *folder.glob("*/*.json")]):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
        runs.append(from_record(record, path))
    return runs


def collect(runs: list[Run], repo: str = ".", folder: Path = RECORDS,
            code: str | None = None) -> list[Path]:
    """Write (or refresh) the record of every finished run in `runs` whose outputs DVC still
    has, only those run on `code` (a code_hash) when given; a commit's own results that an
    experiment's record already holds (the same params and seed on the same code, restored
    from the run cache) get none. Returns the records written."""
    written = []
    known = {(r.code, json.dumps(r.params, sort_keys=True))
             for r in (load_records(folder) if folder.is_dir() else [])}
    # experiments first, so a commit whose results an experiment reproduced is the duplicate
    for run in sorted(runs, key=lambda r: (r.rev == r.baseline_rev, r.timestamp)):
        if run.state != "success":
            continue
        run.code = code_hash(run.baseline_rev, repo)
        if code is not None and run.code != code:
            continue
        if _recorded(record_path(run, folder), run):
            continue
        inputs = (run.code, json.dumps(run.params, sort_keys=True))
        if run.rev == run.baseline_rev and inputs in known:
            continue
        read_outputs(run, repo)
        if run.state != "success":
            log.warning("%s: no record: %s", run.name, run.error)
            continue
        known.add(inputs)
        fsio.write_text(record_path(run, folder), json.dumps(to_record(run), indent=1) + "\n")
        written.append(record_path(run, folder))
    return written


def _recorded(path: Path, run: Run) -> bool:
    """Whether `path` already records this very run, or a later run of the same name."""
    if not path.is_file():
        return False
    old = json.loads(path.read_text(encoding="utf-8"))
    if old.get("experiment") == run.rev and old.get("format") == RECORD_FORMAT:
        return True
    return old.get("timestamp", "") > run.timestamp
