"""The lab report's hypotheses as DVC experiments, from the catalogue hypotheses.yaml.

    python -m nmtlab.hypotheses list [--md]                the catalogue as a table
    python -m nmtlab.hypotheses commands [--queue] [NAMES]  each entry's `dvc exp run` line
    python -m nmtlab.hypotheses queue [--force] [NAMES]     queue all (or the named) entries
    python -m nmtlab.hypotheses queue --seeds 3 [--baseline-seeds 6] [NAMES]
                                      ... each with training seeds 1..3, named ENTRY-sK
    python -m nmtlab.hypotheses start [-j N] [--timeout S]  `dvc queue start -j N`, then wait
    python -m nmtlab.hypotheses wait [--timeout S]          wait for a queue started by hand

Each entry is one params diff against the committed params.yaml, run as
`dvc exp run --queue -n NAME -S key=value ...`. Queued experiments start from
the workspace's git state, uncommitted changes to tracked files included, so
`queue` refuses while params.yaml or dvc.yaml differ from the last commit: the
hypotheses would otherwise stack on whatever the workspace holds (a previous
`dvc exp run -S` leaves its params applied there).

With --seeds, rerunning `queue` queues only what is missing: a name with a run record
(reports/runs/NAME.json), a finished experiment, or a task queued or running is skipped;
a failed one is queued again. A sweep cut short therefore continues where it stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nmt.errors import UserError, main_entry
from nmt.params import from_dict
from nmt.params import load as load_params

from . import sweeplog

CATALOGUE = Path("hypotheses.yaml")
PARAMS = Path("params.yaml")
ENTRY_KEYS = ("name", "hypothesis", "report", "metric", "set")
BASELINE = "baseline"  # the entry without changes: the reference every other entry is tested on
SEED_KEY = "seed"  # the training seed (params.yaml); replicates set it with -S seed=K
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")  # a valid git ref name, so a valid experiment name
PLAIN_STRING_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-./]*")  # Hydra reads it back as this string
HYDRA_KEYWORDS = {"true", "false", "null", "inf", "nan"}  # would not read back as a string


@dataclass(frozen=True)
class Hypothesis:
    name: str  # the experiment's name in `dvc exp show`
    hypothesis: str  # what should improve, one sentence
    report: str  # what origin.md says happened
    metric: str  # what the hypothesis says improves: a key of nmtlab.report.compare.METRICS
    set: dict[str, Any]  # dotted params key -> value: the diff against the baseline

    def overrides(self) -> list[str]:
        """The `-S` arguments: key=value in Hydra's override grammar."""
        return [f"{key}={hydra_value(value)}" for key, value in self.set.items()]

    def command(self, queue: bool = False, force: bool = False, dvc: str = "dvc",
                seed: int | None = None) -> list[str]:
        """The `dvc exp run` line of this entry; with `seed`, the replicate ENTRY-sSEED."""
        name = self.name if seed is None else replicate_name(self.name, seed)
        cmd = [dvc, "exp", "run", *(["--queue"] if queue else []),
               *(["--force"] if force else []), "-n", name]
        for override in self.overrides() + ([f"{SEED_KEY}={seed}"] if seed is not None else []):
            cmd += ["-S", override]
        return cmd


def replicate_name(entry: str, seed: int) -> str:
    return f"{entry}-s{seed}"


def hydra_value(value: Any) -> str:
    """`value` written so that Hydra's override parser reads exactly it back.

    Floats use repr (shortest round trip: 0.0001, 1e-05), lists are written
    without spaces, and strings that Hydra would read as another type or could
    not parse bare ('true', '1.0', 'a b', '') are single-quoted.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        if PLAIN_STRING_RE.fullmatch(value) and value.lower() not in HYDRA_KEYWORDS:
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a Hydra override value")


def apply(raw_params: dict, changes: dict[str, Any]) -> dict:
    """A copy of a params mapping with dotted-key changes applied; every key must exist
    already, as `dvc exp run -S` requires. KeyError(key, hint) on the first that does not."""
    out = yaml.safe_load(yaml.safe_dump(raw_params))  # deep copy of plain data
    for dotted, value in changes.items():
        node = out
        parts = dotted.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                prefix = ".".join(parts[:i])
                close = difflib.get_close_matches(part, list(node), n=1) if isinstance(
                    node, dict) else []
                hint = f"did you mean '{'.'.join(filter(None, [prefix, close[0]]))}'?" if close \
                    else f"'{prefix or '(top level)'}' has no '{part}'"
                raise KeyError(dotted, hint)
            if i == len(parts) - 1:
                node[part] = value
            else:
                node = node[part]
    return out


def load(path: str | Path = CATALOGUE, params_path: str | Path = PARAMS) -> list[Hypothesis]:
    """Read the catalogue and check every entry against the params file.

    Each entry's keys must exist in `params_path`, and the params with the
    entry's changes applied must pass the schema's validation, so a bad entry
    fails here with a line naming it, not as a failed experiment in the queue.
    """
    from nmtlab.report.compare import METRICS

    path, params_path = Path(path), Path(params_path)
    raw_params = dataclasses.asdict(load_params(params_path))
    doc = _read_yaml(path)
    entries = doc.get("hypotheses") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: expected a non-empty list under 'hypotheses:'")
    out: list[Hypothesis] = []
    for i, entry in enumerate(entries):
        where = f"{path}: entry {i + 1}"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: expected a mapping with {', '.join(ENTRY_KEYS)}")
        if isinstance(entry.get("name"), str):
            where = f"{path}: entry '{entry['name']}'"
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        if unknown:
            raise UserError(f"{where}: unknown field '{unknown[0]}' "
                            f"(fields: {', '.join(ENTRY_KEYS)})")
        name, changes = entry.get("name"), entry.get("set")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise UserError(f"{where}: name must be lower-case letters, digits, '.', '_' or '-', "
                            f"got {name!r}")
        if name in {h.name for h in out}:
            raise UserError(f"{where}: the name is used twice")
        for field in ("hypothesis", "report"):
            if not isinstance(entry.get(field), str) or not entry[field].strip():
                raise UserError(f"{where}: '{field}' must be a sentence")
        if entry.get("metric") not in METRICS:
            raise UserError(f"{where}: 'metric' must name what the hypothesis improves, one of "
                            f"{', '.join(METRICS)}; got {entry.get('metric')!r}")
        if changes is None:
            changes = {}
        if not isinstance(changes, dict):
            raise UserError(f"{where}: 'set' must map dotted params keys to values")
        if SEED_KEY in changes:
            raise UserError(f"{where}: set: '{SEED_KEY}' is the training seed, which replicates "
                            f"vary (queue --seeds N); an entry changes the configuration")
        for key, value in changes.items():
            if not _is_override_value(value):
                raise UserError(f"{where}: {key}: values must be numbers, strings, booleans or "
                                f"lists of them (write nested keys dotted), got {value!r}")
        try:
            applied = apply(raw_params, changes)
        except KeyError as e:
            key, hint = e.args
            raise UserError(f"{where}: unknown params key '{key}' in {params_path} ({hint})") \
                from None
        try:
            from_dict(applied).validate()
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        out.append(Hypothesis(name, " ".join(entry["hypothesis"].split()),
                              " ".join(entry["report"].split()), entry["metric"], dict(changes)))
    return out


def select(catalogue: list[Hypothesis], names: list[str]) -> list[Hypothesis]:
    """The named entries in the order given, or all of them when none are named."""
    if not names:
        return catalogue
    by_name = {h.name: h for h in catalogue}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise UserError(f"{CATALOGUE}: no entry named '{missing[0]}' "
                        f"(entries: {', '.join(by_name)})")
    return [by_name[n] for n in names]


def preflight(repo: Path = Path(".")) -> list[str]:
    """Refuse to queue from a workspace whose params or pipeline differ from the last
    commit; return warnings about what would make every experiment slow."""
    git = _run(["git", "status", "--porcelain", "--", "params.yaml", "dvc.yaml"], repo)
    if git.returncode != 0:
        raise UserError("queue: not inside a git repository (dvc exp run needs one): "
                        f"{_last_line(git.stderr)}")
    dirty = sorted({line[3:].strip() for line in git.stdout.splitlines() if line.strip()})
    if dirty:
        raise UserError(
            f"{', '.join(dirty)}: uncommitted changes; queued experiments would carry them "
            "instead of starting from the baseline: commit them, or undo them with "
            f"`git checkout -- {' '.join(dirty)}`")
    warnings = []
    tracked = _run(["git", "ls-files", "--error-unmatch", "dvc.lock"], repo).returncode == 0
    lock_dirty = _run(["git", "status", "--porcelain", "--", "dvc.lock"], repo).stdout.strip()
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
    """The named entries (all when none are named); with seeds, the baseline too, since a
    pooled verdict compares with the baseline's replicates (those already run are skipped)."""
    chosen = select(catalogue, names)
    if seeds and BASELINE not in {h.name for h in chosen}:
        chosen = [h for h in catalogue if h.name == BASELINE] + chosen
    return chosen


def run_states(repo: Path = Path(".")) -> dict[str, str]:
    """Experiment name -> recorded | success | queued | running | failed: the run records,
    the experiments DVC shows, and the queue's tasks. (A task left running by a worker that
    died stays running: `dvc queue kill NAME` marks it failed, to be queued again.)"""
    from nmtlab.report.experiments import RECORDS, dvc_exp_show, parse_exp_show

    states = {}
    for run in parse_exp_show(dvc_exp_show(str(repo))):
        if run.rev != run.baseline_rev and run.state in ("success", "failed"):
            states[run.name] = run.state
    tasks, _ = queue_status(repo)
    for name, status in tasks.values():
        status = status.lower()
        if status in ("queued", "running") or name not in states:
            states[name] = status
    for path in (repo / RECORDS).glob("*.json"):
        states[path.stem] = "recorded"
    return states


def queue(catalogue: list[Hypothesis], force: bool = False, repo: Path = Path("."),
          seeds: int = 0, baseline_seeds: int = 0) -> None:
    """Queue the catalogue's runs. With seeds, a run already recorded, finished, queued or
    running is skipped (unless `force`), and a failed one is queued again."""
    for warning in preflight(repo):
        print(f"warning: {warning}", file=sys.stderr)
    runs = plan(catalogue, seeds, baseline_seeds)
    states = run_states(repo) if (seeds or baseline_seeds) and not force else {}
    queued = skipped = 0
    for h, seed in runs:
        name = h.name if seed is None else replicate_name(h.name, seed)
        state = states.get(name)
        if state in ("recorded", "success", "queued", "running"):
            skipped += 1
            continue
        cmd = h.command(queue=True, force=force or state == "failed",
                        dvc=_dvc(), seed=seed)
        proc = _run(cmd, repo)
        if proc.returncode != 0:
            why = _last_line(proc.stderr or proc.stdout)
            raise UserError(f"queue: `dvc {shlex.join(cmd[1:])}` failed after {queued} of "
                            f"{len(runs)} were queued: {why}")
        queued += 1
        again = f" (again: it {state})" if state else ""
        changes = " ".join(h.overrides() + ([f"{SEED_KEY}={seed}"] if seed else []))
        print(f"queued {name}{again}: {changes or '(the baseline, no changes)'}")
    done = f", {skipped} skipped (recorded, finished, queued or running)" if skipped else ""
    print(f"{queued} experiments queued{done}; run them with `dvc queue start -j N` "
          "(make run-queue JOBS=N), then `make report`")


def queue_status(repo: Path = Path("."), attempts: int = 3,
                 pause: float = 10.0) -> tuple[dict[str, tuple[str, str]], int]:
    """({task id: (experiment name, status)}, workers alive) from `dvc queue status`.

    A failure is tried again `attempts` times in all, `pause` seconds apart: in a sweep's
    sitting one call failed once (DVC's generic error, while another dvc command ran) and
    ended a wait of hours that the queue's workers would have finished."""
    for attempt in range(attempts):
        proc = _run([_dvc(), "queue", "status"], repo)
        if proc.returncode == 0:
            break
        if attempt + 1 < attempts:
            time.sleep(pause)
    else:
        raise UserError(f"dvc queue status failed {attempts} times: "
                        f"{_last_line(proc.stderr or proc.stdout)}")
    tasks = {}
    workers = 0
    for line in proc.stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if m := re.search(r"Worker status: (\d+) active, (\d+) idle", line):
            workers = int(m.group(1)) + int(m.group(2))
        elif len(cells) == 4 and cells[0] != "Task":  # task, name, created, status
            tasks[cells[0]] = (cells[1], cells[3])
    return tasks, workers


def run_queue(jobs: int = 0, timeout: float = 0.0, poll: float = 5.0,
              repo: Path = Path(".")) -> None:
    """Start `jobs` queue workers (0: leave the workers as they are), then wait until every
    experiment queued or running before that has finished. UserError naming the failed
    ones, or when no worker is alive to run them, or after `timeout` seconds (0: never)."""
    start = time.monotonic()
    tasks, _ = queue_status(repo)
    pending = {t for t, (_, status) in tasks.items() if status in ("Queued", "Running")}
    if jobs:
        cmd = [_dvc(), "queue", "start", "-j", str(jobs)]
        print(f"dvc {shlex.join(cmd[1:])}", flush=True)
        # The workers it starts keep its stdout open: a pipe would block until they exit.
        with tempfile.TemporaryFile("w+") as out:
            rc = subprocess.run(cmd, cwd=repo, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT).returncode
            out.seek(0)
            if rc != 0:
                raise UserError(f"dvc queue start failed: {_last_line(out.read())}")
    recorder = None
    if jobs:  # this sitting's wall and CPU time, for the report (nmtlab/sweeplog.py)
        recorder = sweeplog.Recorder(jobs, repo / sweeplog.LOG)
        recorder.begin()
    last, no_worker_since = "", None
    while True:
        tasks, workers = queue_status(repo)
        states = [tasks.get(t, ("?", "Success"))[1] for t in pending]
        open_ = sum(s in ("Queued", "Running") for s in states)
        line = (f"{states.count('Running')} running, {states.count('Queued')} queued, "
                f"{len(states) - open_} done")
        if line != last:
            print(f"queue: {line}", flush=True)
            last = line
        if recorder:
            recorder.tick(len(states) - open_, force=not open_)
        if not open_:
            break
        # `dvc queue status` can count no worker while the last task still runs
        if workers == 0 and not states.count("Running"):
            no_worker_since = no_worker_since or time.monotonic()
            if time.monotonic() - no_worker_since > 60:
                raise UserError(f"queue: {open_} experiments wait, but no queue worker runs: "
                                "start one with `dvc queue start -j N`")
        else:
            no_worker_since = None
        if timeout and time.monotonic() - start > timeout:
            raise UserError(f"queue: still {line} after {timeout:.0f} s")
        time.sleep(poll)
    failed = sorted(tasks[t][0] for t in pending if tasks.get(t, ("", ""))[1] == "Failed")
    if failed:
        raise UserError(f"queue: {len(failed)} of {len(pending)} experiments failed "
                        f"({', '.join(failed)}); see `dvc queue logs NAME`")


def table(catalogue: list[Hypothesis], markdown: bool = False) -> str:
    if markdown:
        rows = ["| name | hypothesis | command |", "| --- | --- | --- |"]
        rows += [f"| {h.name} | {h.hypothesis} | `{shlex.join(h.command())}` |"
                 for h in catalogue]
        return "\n".join(rows)
    width = max(len(h.name) for h in catalogue)
    return "\n".join(f"{h.name:<{width}}  {' '.join(h.overrides()) or '(no changes)'}\n"
                     f"{'':<{width}}  {h.hypothesis}" for h in catalogue)


def _is_override_value(value: Any) -> bool:
    if isinstance(value, list):
        return all(_is_override_value(v) and not isinstance(v, list) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None


def _dvc() -> str:
    """The dvc beside this Python (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else "dvc"


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError(f"{cmd[0]}: command not found") from None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


@main_entry
def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m nmtlab.hypotheses",
                                     description="The lab report's hypotheses as DVC experiments.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="the catalogue as a table")
    p.add_argument("--md", action="store_true", help="a Markdown table with each command")
    p = sub.add_parser("commands", help="the `dvc exp run` line of each entry")
    p.add_argument("--queue", action="store_true", help="with --queue")
    p.add_argument("names", nargs="*")
    p = sub.add_parser("queue", help="queue the entries, each from the baseline")
    p.add_argument("--force", action="store_true", help="replace experiments of the same name "
                   "(and queue every replicate, done or not)")
    p.add_argument("--seeds", type=int, default=0,
                   help="N: each entry with training seeds 1..N, named ENTRY-sK; only the "
                        "missing or failed ones are queued")
    p.add_argument("--baseline-seeds", type=int, default=0,
                   help="M: the baseline with seeds 1..M instead (the A/A check needs 6); "
                        "with seeds, named entries come with the baseline's replicates")
    p.add_argument("names", nargs="*")
    for name, text in (("start", "start queue workers, wait until the queued experiments ran"),
                       ("wait", "wait until the experiments queued or running now have run")):
        p = sub.add_parser(name, help=text)
        if name == "start":
            p.add_argument("-j", "--jobs", type=int, default=1, help="experiments at a time")
        p.add_argument("--timeout", type=float, default=0.0, help="seconds; 0 = no limit")
    args = parser.parse_args()

    if args.command in ("start", "wait"):
        run_queue(getattr(args, "jobs", 0), args.timeout)
        return
    catalogue = load()
    if args.command == "list":
        print(table(catalogue, markdown=args.md))
    elif args.command == "commands":
        for h in select(catalogue, args.names):
            print(shlex.join(h.command(queue=args.queue)))
    else:
        if args.seeds < 0 or args.baseline_seeds < 0:
            raise UserError("queue: --seeds and --baseline-seeds must be 0 or more")
        queue(to_queue(catalogue, args.names, bool(args.seeds or args.baseline_seeds)),
              force=args.force, seeds=args.seeds, baseline_seeds=args.baseline_seeds)


if __name__ == "__main__":
    main()
