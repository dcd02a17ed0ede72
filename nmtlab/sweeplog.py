"""The wall time and CPU time a queue sweep took, over every sitting it ran in.

A sweep of the catalogue can take more than one sitting (a machine that stops,
a session that ends), and the report must say what the whole sweep cost. Each
`nmtlab hypotheses start` (make run-queue, make sweep) adds a row to
reports/sweep_log.tsv when it starts the workers and rewrites that row while it
waits: the start, the last time it saw the queue, the jobs and threads, the
experiments finished so far, and the machine's busy CPU seconds since the start
(from /proc/stat, so everything running on the machine counts; blank where there
is no /proc/stat). A sitting cut off by a stop keeps its last rewrite, so its end
is known to within `EVERY` seconds. Commit the file with the run records.

A sweep in rounds (`nmtlab hypotheses sweep`) also adds a row per round to
reports/sweep_rounds.tsv: the code version, the round, when, the seeds each entry was
wanted at and how many runs it queued. The report reads it to know which code versions were
swept in rounds, and so which decision rule their verdicts follow (docs/seeds.md).
"""
from __future__ import annotations

import csv
import datetime
import io
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from nmt import fsio, trainlog
from nmt.errors import UserError

LOG = Path("reports") / "sweep_log.tsv"
ROUNDS = Path("reports") / "sweep_rounds.tsv"
ROUND_COLUMNS = ("code", "round", "started", "queued", "seeds")
EVERY = 60.0  # seconds between rewrites of the current sitting's row
STAT = Path("/proc/stat")


@dataclass
class Sitting:
    started: str  # UTC, ISO 8601, seconds
    last_seen: str
    jobs: int
    threads: int  # torch threads per job (OMP_NUM_THREADS)
    cores: int
    done: int  # experiments this sitting saw finish (success or failure)
    cpu_seconds: float | None  # busy CPU time of the whole machine over the sitting

    @property
    def hours(self) -> float:
        return (_parse(self.last_seen) - _parse(self.started)).total_seconds() / 3600


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(stamp: str) -> datetime.datetime:
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")


def busy_cpu_seconds(stat: Path = STAT) -> float | None:
    """The machine's CPU time spent not idle since boot (user, nice, system, irq, softirq,
    steal), in seconds; None where /proc/stat is not there."""
    try:
        first = stat.read_text().splitlines()[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


COLUMNS = tuple(f.name for f in fields(Sitting))


def read(path: Path = LOG) -> list[Sitting]:
    if not path.is_file():
        return []
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")), delimiter="\t")
    try:
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"columns {reader.fieldnames}, not {list(COLUMNS)}")
        return [Sitting(started=r["started"], last_seen=r["last_seen"], jobs=int(r["jobs"]),
                        threads=int(r["threads"]), cores=int(r["cores"]), done=int(r["done"]),
                        cpu_seconds=float(r["cpu_seconds"]) if r["cpu_seconds"] else None)
                for r in reader]
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: not a sweep log ({e}); fix or delete it") from None


def write(sittings: list[Sitting], path: Path = LOG) -> None:
    rows = [{**asdict(s), "cpu_seconds": "" if s.cpu_seconds is None else f"{s.cpu_seconds:.0f}"}
            for s in sittings]
    fsio.write_text(path, trainlog.text(rows, COLUMNS))


class Recorder:
    """One sitting's row: `begin` appends it, `tick` rewrites it at most every EVERY
    seconds (always when `force`)."""

    def __init__(self, jobs: int, path: Path = LOG, stat: Path = STAT):
        self.path, self.stat = path, stat
        threads = os.environ.get("OMP_NUM_THREADS", "")
        cores = os.cpu_count() or 1
        self.cpu0 = busy_cpu_seconds(stat)
        self.sitting = Sitting(_now(), _now(), jobs,
                               int(threads) if threads.isdigit() else max(1, cores // jobs),
                               cores, 0, None if self.cpu0 is None else 0.0)
        self.previous = read(path)
        self.last_write = 0.0
        self.before = 0  # experiments finished in earlier rounds of this sitting

    def begin(self) -> None:
        self.tick(0, force=True)

    def tick(self, done: int, force: bool = False) -> None:
        if not force and time.monotonic() - self.last_write < EVERY:
            return
        self.sitting.last_seen, self.sitting.done = _now(), done
        cpu = busy_cpu_seconds(self.stat)
        if cpu is not None and self.cpu0 is not None:
            self.sitting.cpu_seconds = cpu - self.cpu0
        write(self.previous + [self.sitting], self.path)
        self.last_write = time.monotonic()


def summary(sittings: list[Sitting]) -> str:
    """One sentence for the report: sittings, wall hours, CPU-hours, experiments."""
    if not sittings:
        return ""
    hours = sum(s.hours for s in sittings)
    cpu = [s.cpu_seconds for s in sittings]
    cpu_text = (f"{sum(cpu) / 3600:.2f} CPU-hours (the machine's busy CPU time, /proc/stat)"
                if all(c is not None for c in cpu) else "CPU time not measured in every sitting")
    setups = sorted({f"{s.jobs} job(s) x {s.threads} thread(s) on {s.cores} cores"
                     for s in sittings})
    return (f"The queue sweep ran in {len(sittings)} sitting(s), {hours:.2f} hours of wall time "
            f"in all, {cpu_text}; {sum(s.done for s in sittings)} experiments finished; "
            f"{'; '.join(setups)} (reports/sweep_log.tsv).")


def add_round(code: str, seeds: dict[str, int], queued: int, path: Path = ROUNDS) -> None:
    """Append a round of the sweep of code version `code`: the seeds wanted per entry."""
    rows = read_rounds(path)
    number = 1 + sum(r["code"] == code for r in rows)
    rows.append({"code": code, "round": number, "started": _now(), "queued": queued,
                 "seeds": " ".join(f"{name}={n}" for name, n in seeds.items())})
    fsio.write_text(path, trainlog.text(rows, ROUND_COLUMNS))


def read_rounds(path: Path = ROUNDS) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")), delimiter="\t")
    if tuple(reader.fieldnames or ()) != ROUND_COLUMNS:
        raise UserError(f"{path}: not a rounds log (columns {reader.fieldnames}, not "
                        f"{list(ROUND_COLUMNS)}); fix or delete it")
    return list(reader)


def sequential_codes(path: Path = ROUNDS) -> set[str]:
    """Code versions swept in rounds: their verdicts follow the sequential rule."""
    return {row["code"] for row in read_rounds(path)}
