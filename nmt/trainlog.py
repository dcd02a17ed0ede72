"""The training logs' format, in one place: the trainer writes it, the plots stage
and the report read it, and dvc.yaml's plots name its columns.

    data/train/log/epochs.tsv   one row per epoch: EPOCH_COLUMNS (minutes: the run's
                                training minutes so far, validation included;
                                peak_memory_mb: the process's peak RSS so far, or
                                CUDA's peak allocation), then val_bleu where
                                train.val_bleu is on
    data/train/log/steps.tsv    one row per optimizer step: STEP_COLUMNS

Tab-separated, a header row, then numbers. A run that a budget stopped
mid-epoch ends with that epoch's row, validated where it stopped.

While training runs, `LiveLog` keeps these files (and data/train/metrics.json)
current, a row as each step or epoch ends, so `dvc plots show`, `dvc exp show`
and the VS Code extension follow the run. It also logs through DVCLive into
data/train/live/{epochs,steps} (not a stage output; DVCLive's own layout, and
its signal that tells VS Code a queued run finished an epoch). At the end the
stage rewrites the outputs whole, atomically, from the resume state: what DVC
stores is never a half-written file. A resumed run starts by rewriting every
live file from its state, so its logs equal an unbroken run's.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from typing import Any

from . import fsio
from .errors import UserError

EPOCHS_FILE = "epochs.tsv"
STEPS_FILE = "steps.tsv"
# A new per-epoch value is a key in the trainer's epoch row and a column here.
EPOCH_COLUMNS = ("epoch", "train_loss", "val_loss", "val_ppl", "lr", "seconds", "tokens_per_s",
                 "minutes", "peak_memory_mb")
BLEU_COLUMN = "val_bleu"  # greedy validation BLEU, with train.val_bleu
STEP_COLUMNS = ("step", "lr", "train_loss")

_RERUN = "rerun the stage that wrote it"


def header(columns: tuple[str, ...]) -> str:
    return "\t".join(columns) + "\n"


def line(row: dict, columns: tuple[str, ...]) -> str:
    return "\t".join(str(row[c]) for c in columns) + "\n"


def text(rows: list[dict], columns: tuple[str, ...]) -> str:
    """A whole log file: the header, then one line per row."""
    return header(columns) + "".join(line(r, columns) for r in rows)


def epoch_columns(val_bleu: bool) -> tuple[str, ...]:
    """The epoch log's columns: val_bleu last where the run logs it."""
    return EPOCH_COLUMNS + ((BLEU_COLUMN,) if val_bleu else ())


def write(log_dir: Path, epoch_rows: list[dict], step_rows: list[dict],
          val_bleu: bool = False) -> None:
    """Both logs into `log_dir`, replacing it whole (atomically)."""
    with fsio.atomic_dir(log_dir) as tmp:
        fsio.write_text(tmp / EPOCHS_FILE, text(epoch_rows, epoch_columns(val_bleu)))
        fsio.write_text(tmp / STEPS_FILE, text(step_rows, STEP_COLUMNS))


def read(path: str | os.PathLike) -> list[dict[str, float]]:
    """A log file as rows of floats; a damaged file is a UserError naming the file, line
    and column."""
    try:
        content = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid UTF-8 (byte {e.start}); {_RERUN}") from None
    return parse(content, str(path))


def parse(content: str, source: str) -> list[dict[str, float]]:
    """A log's text (read from a file or from another experiment) as rows of floats."""
    rows = []
    reader = csv.DictReader(io.StringIO(content, newline=""), delimiter="\t")
    for row in reader:
        if None in row or None in row.values():
            raise UserError(f"{source}: line {reader.line_num} does not have the header's "
                            f"{len(reader.fieldnames or [])} cells; {_RERUN}")
        cells = {}
        for column, cell in row.items():
            try:
                cells[column] = float(cell)
            except ValueError:
                raise UserError(f"{source}: line {reader.line_num}, column {column!r}: "
                                f"{cell[:40]!r} is not a number; {_RERUN}") from None
        rows.append(cells)
    return rows


class LiveLog:
    """The logs of a running training, appended as it goes (see the module docstring)."""

    def __init__(self, log_dir: Path, live_dir: Path, metrics_path: Path,
                 val_bleu: bool = False):
        self.log_dir, self.live_dir, self.metrics_path = log_dir, live_dir, metrics_path
        self.val_bleu = val_bleu
        self.epoch_columns = epoch_columns(val_bleu)
        self._files: dict[str, Any] = {}
        self._live: dict[str, Any] = {}

    def start(self, epoch_rows: list[dict], step_rows: list[dict]) -> None:
        """Rewrite every live file from the rows so far (a resumed run's saved ones)."""
        from dvclive import Live  # imports dvc: only where a run logs live

        write(self.log_dir, epoch_rows, step_rows, self.val_bleu)
        for name in (EPOCHS_FILE, STEPS_FILE):
            self._files[name] = open(self.log_dir / name, "a", encoding="utf-8", buffering=1)
        for kind in ("epochs", "steps"):  # a fresh Live clears what it logged before
            self._live[kind] = Live(str(self.live_dir / kind), dvcyaml=False,
                                    save_dvc_exp=False, report=None)
        for row in step_rows:
            self._log("steps", row, STEP_COLUMNS)
        for row in epoch_rows:
            self._log("epochs", row, self.epoch_columns)
        for live in self._live.values():
            live.make_summary()

    def step(self, row: dict) -> None:
        self._files[STEPS_FILE].write(line(row, STEP_COLUMNS))  # line-buffered: a whole row
        self._log("steps", row, STEP_COLUMNS)

    def epoch(self, row: dict, metrics: dict) -> None:
        """An epoch ended (or a budget stopped it): its row, and the run's metrics so far."""
        self._files[EPOCHS_FILE].write(line(row, self.epoch_columns))
        self._live["steps"].make_summary()
        self._log("epochs", row, self.epoch_columns)
        self._live["epochs"].next_step()  # metrics.json, and VS Code's signal in queued runs
        fsio.write_json(self.metrics_path, metrics)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        for live in self._live.values():
            live.end()
        self._live.clear()

    def _log(self, kind: str, row: dict, columns: tuple[str, ...]) -> None:
        """A row into DVCLive: its first column (epoch or step) is DVCLive's step."""
        live = self._live[kind]
        live.step = int(row[columns[0]])
        for name in columns[1:]:
            live.log_metric(name, row[name])
