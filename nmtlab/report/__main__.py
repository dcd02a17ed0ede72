"""`nmtlab report [--collect | --records-only] [--calibrate]`: write the run records of
finished DVC experiments (reports/runs/), then reports/experiments.md and its figures from
the records.

    nmtlab report                  records from DVC, then the report
    nmtlab report --collect        only write/refresh the records
    nmtlab report --records-only   the report from the committed records alone (fresh clone)
    nmtlab report --calibrate      ... measuring the tests first on the baseline's runs
                                   (reports/calibration.json; a minute or two)

Only experiments run on the checked-out commit's code (nmt/, stages/, dvc.yaml) get a
record, unless --all-code; the report shows every record, one section per code version and
provenance.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from nmt import fsio
from nmt.errors import UserError, main_entry
from nmt.params import load

from .. import dvcrun, sweeplog
from ..hypotheses import catalogue as cat
from ..metrics import METRICS
from . import calibration, figures
from .compare import Group, group_runs
from .experiments import RECORDS, code_hash, collect, load_records, parse_exp_show
from .markdown import render

log = logging.getLogger("nmt.report")

REPORT = Path("reports") / "experiments.md"


def catalogue() -> list[cat.Hypothesis]:
    """hypotheses.yaml's entries; [] without one (or a broken one: said in the log)."""
    if not cat.CATALOGUE.is_file():
        return []
    try:
        return cat.load()
    except UserError as e:
        log.warning("hypotheses left out of the report: %s", e)
        return []


def write_figures(groups: list[Group], dpi: int, out_dir: Path) -> list[dict[str, str]]:
    """Per group, {what: file name}; a group's files carry its number when there are several."""
    written = []
    for i, g in enumerate(groups):
        suffix = f"_{i + 1}" if len(groups) > 1 else ""
        mine: dict[str, str] = {}
        for metric in METRICS:
            name = f"forest_{metric}{suffix}.png"
            if figures.forest_plot(out_dir / name, g, metric, dpi):
                mine[metric] = name
        for column, label in (("val_loss", "validation loss"), ("train_loss", "train loss")):
            name = f"experiments_{column}{suffix}.png"
            if figures.curves(out_dir / name, g, column, label, dpi):
                mine[f"{column}_curves"] = name
        written.append(mine)
    return written


def calibrate(groups: list[Group]) -> None:
    """Measure the tests on the baseline runs of the newest group that has enough of them;
    reports/calibration.json."""
    base = next((g.baseline for g in groups if g.baseline and len(g.baseline.runs) >=
                 calibration.MIN_BASELINE_RUNS), None)
    if base is None:
        raise UserError(f"--calibrate needs a baseline of at least "
                        f"{calibration.MIN_BASELINE_RUNS} runs with test BLEU statistics")
    runs = base.runs
    log.info("calibrating on the %d baseline runs %s: %d A/A comparisons per design, "
             "%d simulated arms per effect (a minute or two)", len(runs),
             ", ".join(r.name for r in runs), calibration.REPLICATIONS,
             calibration.SEQUENTIAL_REPLICATIONS)
    result = calibration.calibrate(
        {"runs": [r.name for r in runs], "code": runs[0].code,
         "stats": np.stack([r.sentences["test"] for r in runs]),
         "val_losses": np.array([r.train["best_val_loss"] for r in runs])},
        {m: metric.min_effect for m, metric in METRICS.items()})
    calibration.write(result)
    log.info("wrote %s", calibration.CALIBRATION)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nmtlab report", description="Write the run records of finished experiments "
        f"({RECORDS}/), then {REPORT} and its figures from the records.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--collect", action="store_true",
                      help=f"only write the records of finished experiments ({RECORDS}/)")
    mode.add_argument("--records-only", action="store_true",
                      help="build the report from the committed records; do not ask DVC")
    parser.add_argument("--all-code", action="store_true",
                        help="record experiments run on any code version, not only on the "
                             "code of the checked-out commit")
    parser.add_argument("--calibrate", action="store_true",
                        help=f"first measure the tests on simulated A/A comparisons built from "
                             f"the baseline's runs ({calibration.CALIBRATION})")
    return parser.parse_args()


@main_entry
def main() -> None:
    args = parse_args()
    logging.getLogger("sacrebleu").setLevel(logging.WARNING)
    if not Path(".dvc").is_dir():
        raise UserError(f"{Path.cwd()}: not a DVC repository root (no .dvc folder); "
                        f"run the report from the project root")
    dpi = load().plots.dpi
    unfinished, written = [], []
    if not args.records_only:
        runs = parse_exp_show(dvcrun.exp_show())
        written = collect(runs, code=None if args.all_code else code_hash("HEAD"))
        unfinished = [r for r in runs if r.state in ("failed", "queued", "running")]
        log.info("%d record(s) written to %s", len(written), RECORDS)
        if args.collect:
            return
    runs = load_records() if RECORDS.is_dir() else []
    if not runs:
        raise UserError("no experiments yet: run some with `dvc exp run -n NAME -S key=value` "
                        "(or `make sweep JOBS=2`), then rerun the report")
    groups = group_runs(runs, catalogue(), sweeplog.sequential_codes())
    if args.calibrate:
        calibrate(groups)
    figs = write_figures(groups, dpi, REPORT.parent)
    sweep = sweeplog.summary(sweeplog.read())
    fsio.write_text(REPORT, render(groups, figs, len(written), unfinished, sweep,
                                   calibration.read()))
    log.info("wrote %s from %d run record(s)", REPORT, len(runs))


if __name__ == "__main__":
    main()
