"""The queue driver: catalogue entries queued as DVC experiments, the queue run and waited
for, all read from DVC's machine-readable output (`dvc exp show --json`: every queued,
running, failed or finished experiment with its executor's state) and the run records.

Queued experiments start from the workspace's git state, uncommitted changes to tracked
files included, so queueing refuses while params.yaml or dvc.yaml differ from the last
commit: the hypotheses would otherwise stack on whatever the workspace holds (a previous
`dvc exp run -S` leaves its params applied there).

With seeds, a run that is recorded (reports/runs/, this code version), finished on this code
version, queued or running is skipped, and a failed one is queued again: a sweep cut short
continues where it stopped.
"""
from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

from nmt.errors import UserError

from .. import dvcrun, sweeplog
from .catalogue import BASELINE, SEED_KEY, Hypothesis, references, replicate_name, select

OPEN = ("queued", "running")
DONE = ("recorded", "success")


def preflight(repo: Path = Path(".")) -> list[str]:
    """Refuse to queue from a workspace whose params or pipeline differ from the last
    commit; return warnings about what would make every experiment slow."""
    git = _git(["status", "--porcelain", "--", "params.yaml", "dvc.yaml"], repo)
    if git.returncode != 0:
        raise UserError("queue: not inside a git repository (dvc exp run needs one): "
                        f"{dvcrun.last_line(git.stderr)}")
    dirty = sorted({line[3:].strip() for line in git.stdout.splitlines() if line.strip()})
    if dirty:
        raise UserError(
            f"{', '.join(dirty)}: uncommitted changes; queued experiments would carry them "
            "instead of starting from the baseline: commit them, or undo them with "
            f"`git checkout -- {' '.join(dirty)}`")
    warnings = []
    tracked = _git(["ls-files", "--error-unmatch", "dvc.lock"], repo).returncode == 0
    lock_dirty = _git(["status", "--porcelain", "--", "dvc.lock"], repo).stdout.strip()
    if not tracked or lock_dirty:
        warnings.append("dvc.lock is not committed: each queued experiment will rerun the "
                        "stages the baseline already ran (run `dvc repro` and commit dvc.lock "
                        "first to reuse them)")
    return warnings


def plan(catalogue: list[Hypothesis], seeds: int = 0,
         baseline_seeds: int = 0) -> list[tuple[Hypothesis, int | None]]:
    """(entry, training seed) of every run to queue: each entry once without seeds, else with
    seeds 1..seeds (the baseline 1..baseline_seeds, when given)."""
    if not seeds and not baseline_seeds:
        return [(h, None) for h in catalogue]
    return [(h, k) for h in catalogue
            for k in range(1, (baseline_seeds if h.name == BASELINE and baseline_seeds
                               else seeds) + 1)]


def to_queue(catalogue: list[Hypothesis], names: list[str], seeds: bool) -> list[Hypothesis]:
    """The named entries (all when none are named); with seeds, also every entry they are
    compared with (the baseline, or their `against`), whose seeds the comparison pairs with
    (those already run are skipped)."""
    chosen = select(catalogue, names)
    if not seeds:
        return chosen
    extra = [h for h in references(catalogue, chosen) if h not in chosen]
    return extra + chosen


def experiments(shown: list[dict]) -> list[dict[str, str]]:
    """Every experiment of `dvc exp show --json` output: its name, the commit it ran from,
    its state (queued, running, failed or success) and its queue task (or its rev)."""
    out = []
    for row in shown:
        if row.get("rev") == "workspace":
            continue
        for exp in row.get("experiments") or []:
            executor = exp.get("executor") or {}
            for rev in exp.get("revs") or []:
                out.append({"name": rev.get("name") or exp.get("name") or rev["rev"][:7],
                            "commit": row["rev"], "state": executor.get("state") or "success",
                            "task": (executor.get("local") or {}).get("task_id") or rev["rev"]})
    return out


def experiment_states(shown: list[dict], code: str, repo: Path = Path(".")) -> dict[str, str]:
    """{experiment name: state}: queued and running experiments from any commit, finished and
    failed ones only from commits whose code version (report.experiments.code_hash) is
    `code`; an open task wins over a closed one of the same name."""
    from nmtlab.report.experiments import code_hash

    codes: dict[str, str] = {}
    states: dict[str, str] = {}
    for exp in experiments(shown):
        if exp["state"] not in OPEN:
            if exp["commit"] not in codes:
                codes[exp["commit"]] = code_hash(exp["commit"], str(repo))
            if codes[exp["commit"]] != code or states.get(exp["name"]) in OPEN:
                continue
        states[exp["name"]] = exp["state"]
    return states


def run_states(repo: Path = Path("."), code: str | None = None) -> dict[str, str]:
    """Experiment name -> recorded | success | queued | running | failed, for the code
    version `code` (the checked-out commit's when None): its run records, the experiments
    DVC shows, and the queue's tasks. (A task left running by a worker that died stays
    running: `dvc queue kill NAME` marks it failed, to be queued again.)"""
    from nmtlab.report.experiments import RECORDS, code_hash, load_records

    code = code or code_hash("HEAD", str(repo))
    states = experiment_states(dvcrun.exp_show(repo), code, repo)
    if (repo / RECORDS).is_dir():
        for run in load_records(repo / RECORDS):
            if run.code == code:
                states[run.name] = "recorded"
    return states


def queue_runs(runs: list[tuple[Hypothesis, int | None]], states: dict[str, str],
               repo: Path = Path("."), force: bool = False) -> tuple[int, int]:
    """Queue each (entry, seed) not recorded, finished, queued or running in `states` (all
    with `force`); a failed one again. Returns (queued, skipped)."""
    queued = skipped = 0
    for h, seed in runs:
        name = h.name if seed is None else replicate_name(h.name, seed)
        state = None if force else states.get(name)
        if state in DONE + OPEN:
            skipped += 1
            continue
        cmd = h.command(queue=True, force=force or state == "failed", seed=seed)
        proc = dvcrun.run(cmd[1:], repo)
        if proc.returncode != 0:
            raise UserError(f"queue: `{shlex.join(cmd)}` failed after {queued} of {len(runs)} "
                            f"were queued: {dvcrun.last_line(proc.stderr or proc.stdout)}")
        queued += 1
        again = f" (again: it {state})" if state else ""
        changes = " ".join(h.overrides() + ([f"{SEED_KEY}={seed}"] if seed else []))
        print(f"queued {name}{again}: {changes or '(the baseline, no changes)'}", flush=True)
    return queued, skipped


def queue(catalogue: list[Hypothesis], force: bool = False, repo: Path = Path("."),
          seeds: int = 0, baseline_seeds: int = 0) -> None:
    """Queue the catalogue's runs (after `preflight`). With seeds, a run already recorded,
    finished, queued or running is skipped (unless `force`), and a failed one is queued
    again."""
    runs = plan(catalogue, seeds, baseline_seeds)
    states = run_states(repo) if (seeds or baseline_seeds) and not force else {}
    queued, skipped = queue_runs(runs, states, repo, force)
    done = f", {skipped} skipped (recorded, finished, queued or running)" if skipped else ""
    print(f"{queued} experiments queued{done}; run them with `dvc queue start -j N` "
          "(make run-queue JOBS=N), then `make report`")


def run_queue(jobs: int = 0, timeout: float = 0.0, poll: float = 30.0,
              repo: Path = Path("."), stuck_after: float = 120.0,
              recorder: sweeplog.Recorder | None = None) -> None:
    """Start `jobs` queue workers (0: leave the workers as they are), then wait until every
    experiment queued or running before that has finished. UserError naming the failed
    ones, when experiments wait but none has run for `stuck_after` seconds (no worker),
    or after `timeout` seconds (0: never). The sitting's wall and CPU time go to the sweep
    log (nmtlab/sweeplog.py) through `recorder`, a new one when workers are started."""
    start = time.monotonic()
    tasks = _tasks(repo)
    pending = {task for task, (_, state) in tasks.items() if state in OPEN}
    if jobs:
        print(f"dvc queue start -j {jobs}", flush=True)
        dvcrun.start_workers(jobs, repo)
        if recorder is None:
            recorder = sweeplog.Recorder(jobs, repo / sweeplog.LOG)
            recorder.begin()
    last, idle_since = "", time.monotonic()
    while True:
        tasks = _tasks(repo)
        states = [tasks.get(t, ("?", "success"))[1] for t in pending]
        open_ = sum(s in OPEN for s in states)
        line = (f"{states.count('running')} running, {states.count('queued')} queued, "
                f"{len(states) - open_} done")
        if line != last or states.count("running"):
            idle_since = time.monotonic()
        if line != last:
            print(f"queue: {line}", flush=True)
            last = line
        if recorder:
            recorder.tick(recorder.before + len(states) - open_, force=not open_)
        if not open_:
            break
        if time.monotonic() - idle_since > stuck_after:
            raise UserError(f"queue: {open_} experiments wait, but none has run for "
                            f"{stuck_after:.0f} s: start a worker with `dvc queue start -j N`")
        if timeout and time.monotonic() - start > timeout:
            raise UserError(f"queue: still {line} after {timeout:.0f} s")
        time.sleep(poll)
    if recorder:
        recorder.before += len(pending)
    failed = sorted(tasks[t][0] for t in pending if tasks.get(t, ("", ""))[1] == "failed")
    if failed:
        raise UserError(f"queue: {len(failed)} of {len(pending)} experiments failed "
                        f"({', '.join(failed)}); see `dvc queue logs NAME`")


def _tasks(repo: Path) -> dict[str, tuple[str, str]]:
    """{task id: (experiment name, state)} of every experiment DVC shows."""
    return {e["task"]: (e["name"], e["state"]) for e in experiments(dvcrun.exp_show(repo))}


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("git: command not found") from None
