"""Put a trained model where `train.init_from` starts from: `nmtlab init-from`.

    nmtlab init-from data/model/averaged.pt --rev baseline   # an experiment's (or commit's) file
    nmtlab init-from ../other-project/data/model/averaged.pt  # a file on disk
    dvc exp run -n finetune -S train.init_from=init/model.pt

The file must be a model file this project wrote (an averaged model or an
epoch checkpoint). It is copied to init/model.pt and tracked with `dvc add`:
the train stage depends on the init/ folder, so DVC retrains when the file
changes, and queued experiments get it from the DVC cache. With --rev the file
is read through dvc.api from that experiment or git revision, without
switching the workspace. Whether its architecture and vocabulary fit is
checked when training starts (one line names what differs).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from nmt import checkpoints, fsio
from nmt.errors import UserError, main_entry

INIT = Path("init") / "model.pt"


def fetch(source: str, rev: str | None, into: Path) -> Path:
    """`source` as a local file: itself, or with `rev` its content at that revision."""
    if rev is None:
        if not Path(source).is_file():
            raise UserError(f"{source}: no such file")
        return Path(source)
    import dvc.api
    from dvc.exceptions import DvcException
    from dvc.scm import RevError

    dest = into / "model.pt"
    try:
        with dvc.api.open(source, repo=".", rev=rev, mode="rb") as f:
            dest.write_bytes(f.read())
    except RevError:
        raise UserError(f"--rev {rev}: no such experiment or git revision here") from None
    except (FileNotFoundError, DvcException):
        raise UserError(f"--rev {rev}: has no {source}") from None
    return dest


@main_entry
def main() -> None:
    ap = argparse.ArgumentParser(prog="nmtlab init-from", description=__doc__.splitlines()[0])
    ap.add_argument("source", help="a model file this project wrote (a path, or with --rev "
                                   "a path inside that experiment)")
    ap.add_argument("--rev", help="experiment name or git revision to read SOURCE from")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = fetch(args.source, args.rev, Path(tmp))
        checkpoints.load_model_file(path)  # refuses anything but this project's model files
        with fsio.atomic_path(INIT) as out:
            out.write_bytes(path.read_bytes())
    proc = subprocess.run([sys.executable, "-m", "dvc", "add", "-q", str(INIT)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        raise UserError(f"dvc add {INIT} failed: {lines[-1]}")
    print(f"{INIT}: {args.source}{f' at {args.rev}' if args.rev else ''}, tracked by DVC\n"
          f"next:  git add {INIT}.dvc init/.gitignore\n"
          f"       dvc exp run -S train.init_from={INIT}")


if __name__ == "__main__":
    main()
