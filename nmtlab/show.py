"""The experiments table a researcher compares: `dvc exp show` with the columns that matter.

    nmtlab show [any dvc exp show options, e.g. --md, --sort-by test.bleu, -A]

Plain `dvc exp show --only-changed` prints every metric and one column per
dependency hash (61 columns, most of them hashes, after the default run). This
runs the same command with DVC's own `--drop`/`--keep` patterns: the params that
differ between the rows, then the metrics in COMPARED, test BLEU and chrF first,
right after the experiment's name, so that a terminal too narrow for the whole
table (DVC folds the columns that do not fit into "…") still shows them.
`--print` prints the dvc command instead of running it, to copy or to alias
(DVC's own column order there: the metrics files in the order of their stages).
"""
from __future__ import annotations

import dataclasses
import shlex
import sys

from nmt.params import Params

# The metrics every row shows, in this order (train: data/train/metrics.json, bleu:
# data/bleu/metrics.json). The last epoch's validation loss (final_val_loss) is left to
# `dvc exp show --json`: its 17 columns kept the table over 160 wide once an experiment
# changed one params key.
COMPARED = ("test.bleu", "test.chrf", "best_val_loss", "epochs", "stopped_by",
            "train_minutes", "tokens_per_s", "peak_memory_mb")
# DVC's own columns; it drops State and Executor itself when they are empty.
DVC_COLUMNS = ("Experiment", "rev", "typ", "parent", "State", "Executor")


def drop_pattern() -> str:
    """Every column that is neither a params key nor one of DVC's own: the other metrics
    and the dependency hashes (their names are paths, never `group.key`)."""
    groups = "|".join(f.name for f in dataclasses.fields(Params))
    own = "|".join(DVC_COLUMNS)
    return rf"^(?!({groups})(\.|$)|({own})$)"


def keep_pattern() -> str:
    """The compared metrics, kept even when equal in every row; a `file:` prefix appears
    when two metrics files share a name."""
    names = "|".join(name.replace(".", r"\.") for name in COMPARED)
    return rf"^([^:]*:)?({names})$"


def column_order(columns: list[str]) -> list[str]:
    """`columns` with the compared metrics moved, in COMPARED's order, to just after DVC's
    own columns; every other column keeps its place after them."""
    def metric(column: str) -> str:
        return column.rsplit(":", 1)[-1]

    own = [c for c in columns if c in DVC_COLUMNS or c == "Created"]
    compared = sorted((c for c in columns if metric(c) in COMPARED),
                      key=lambda c: COMPARED.index(metric(c)))
    rest = [c for c in columns if c not in own and c not in compared]
    return own + compared + rest


def arguments(extra: list[str]) -> list[str]:
    """`dvc exp show`'s arguments (without `dvc`): the patterns, then the user's."""
    return ["exp", "show", "--no-pager", "--only-changed",
            "--drop", drop_pattern(), "--keep", keep_pattern(), *extra]


def run_dvc(extra: list[str]) -> int:
    """Run `dvc exp show` in this process, its table's columns in column_order."""
    from dvc.cli import main as dvc_main
    from dvc.repo.experiments import show as exp_show

    tabulate = exp_show.tabulate

    def tabulate_compared_first(*args, **kwargs):
        table, headers = tabulate(*args, **kwargs)
        table.project(*column_order(table.keys()))
        return table, headers

    exp_show.tabulate = tabulate_compared_first  # the command imports it when it runs
    try:
        return dvc_main(arguments(extra))
    finally:
        exp_show.tabulate = tabulate


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return
    if argv[:1] == ["--print"]:
        print(shlex.join(["dvc", *arguments(argv[1:])]))
        return
    sys.exit(run_dvc(argv))


if __name__ == "__main__":
    main()
