"""`nmtlab report [--collect | --records-only]`: write the run records of finished DVC
experiments (reports/runs/), then reports/experiments.md and its figures from the records.

    nmtlab report                  records from DVC, then the report
    nmtlab report --collect        only write/refresh the records
    nmtlab report --records-only   the report from the committed records alone (fresh clone)

Only experiments run on the checked-out commit's code (nmt/, stages/, dvc.yaml) get a
record, unless --all-code; the report shows every record, one section per code version.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from nmt import fsio
from nmt.errors import UserError, main_entry
from nmt.params import load

from .. import sweeplog
from . import figures
from .compare import Group, group_runs
from .experiments import (RECORDS, code_hash, collect, dvc_exp_show, load_records,
                          parse_exp_show)
from .markdown import render

log = logging.getLogger("nmt.report")

REPORT = Path("reports") / "experiments.md"


def catalogue() -> dict[str, tuple[dict, str, str]]:
    """hypotheses.yaml as entry -> (params changes, hypothesis, metric); {} without one."""
    from nmtlab import hypotheses

    if not hypotheses.CATALOGUE.is_file():
        return {}
    try:
        return {h.name: (h.set, h.hypothesis, h.metric) for h in hypotheses.load()}
    except UserError as e:
        log.warning("hypotheses left out of the report: %s", e)
        return {}


def write_figures(groups: list[Group], dpi: int, out_dir: Path) -> dict[str, dict[str, str]]:
    """{group code: {what: file name}}; a group's files carry its number when there are several."""
    written: dict[str, dict[str, str]] = {}
    for i, g in enumerate(groups):
        suffix = f"_{i + 1}" if len(groups) > 1 else ""
        mine = written.setdefault(g.code, {})
        for metric in ("bleu", "val_loss"):
            name = f"forest_{metric}{suffix}.png"
            if figures.forest_plot(out_dir / name, g, metric, dpi):
                mine[metric] = name
        for column, label in (("val_loss", "validation loss"), ("train_loss", "train loss")):
            name = f"experiments_{column}{suffix}.png"
            if figures.curves(out_dir / name, g, column, label, dpi):
                mine[f"{column}_curves"] = name
    return written


@main_entry
def main() -> None:
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
    args = parser.parse_args()
    logging.getLogger("sacrebleu").setLevel(logging.WARNING)
    if not Path(".dvc").is_dir():
        raise UserError(f"{Path.cwd()}: not a DVC repository root (no .dvc folder); "
                        f"run the report from the project root")
    dpi = load().plots.dpi
    unfinished, written = [], []
    if not args.records_only:
        runs = parse_exp_show(dvc_exp_show())
        written = collect(runs, code=None if args.all_code else code_hash("HEAD"))
        unfinished = [r for r in runs if r.state in ("failed", "queued", "running")]
        log.info("%d record(s) written to %s", len(written), RECORDS)
        if args.collect:
            return
    runs = load_records() if RECORDS.is_dir() else []
    if not runs:
        raise UserError("no experiments yet: run some with `dvc exp run -n NAME -S key=value` "
                        "(or `make queue-hypotheses SEEDS=3` and `make run-queue`), then rerun "
                        "the report")
    groups = group_runs(runs, catalogue())
    figs = write_figures(groups, dpi, REPORT.parent)
    sweep = sweeplog.summary(sweeplog.read())
    fsio.write_text(REPORT, render(groups, figs, len(written), unfinished, sweep))
    log.info("wrote %s from %d run record(s)", REPORT, len(runs))


if __name__ == "__main__":
    main()
