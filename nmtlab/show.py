"""The experiments table a researcher compares: `dvc exp show` with the columns that matter.

    nmtlab show [any dvc exp show options, e.g. --md, --sort-by test.bleu, -A]

Plain `dvc exp show --only-changed` prints every metric and one column per
dependency hash (61 columns, most of them hashes, after the default run). This
runs the same command with DVC's own `--drop`/`--keep` patterns: the params that
differ between the rows, then the metrics in COMPARED. `--print` prints the
dvc command instead of running it, to copy or to alias.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import sys

from nmt.params import Params

# The metrics every row shows (train: data/train/metrics.json, bleu: data/bleu/metrics.json).
# The last epoch's validation loss (final_val_loss) is left to `dvc exp show --json`: its
# 17 columns kept the table over 160 wide once an experiment changed one params key.
COMPARED = ("epochs", "stopped_by", "best_val_loss", "train_minutes",
            "tokens_per_s", "peak_memory_mb", "test.bleu", "test.chrf")
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


def command(extra: list[str]) -> list[str]:
    dvc = shutil.which("dvc") or os.path.join(os.path.dirname(sys.executable), "dvc")
    return [dvc, "exp", "show", "--no-pager", "--only-changed",
            "--drop", drop_pattern(), "--keep", keep_pattern(), *extra]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return
    if argv[:1] == ["--print"]:
        print(shlex.join(["dvc", *command(argv[1:])[1:]]))
        return
    cmd = command(argv)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
