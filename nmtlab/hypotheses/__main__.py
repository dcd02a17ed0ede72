"""`nmtlab hypotheses` (`python -m nmtlab.hypotheses`): the catalogue on the command line.

    nmtlab hypotheses list [--md]                 the catalogue as a table
    nmtlab hypotheses commands [--queue] [NAMES]  each entry's `dvc exp run` line
    nmtlab hypotheses queue [--force] [NAMES]     queue all (or the named) entries
    nmtlab hypotheses queue --seeds 3 [--baseline-seeds 6] [NAMES]
                                   ... each with training seeds 1..3, named ENTRY-sK
    nmtlab hypotheses start [-j N] [--timeout S]  `dvc queue start -j N`, then wait
    nmtlab hypotheses wait [--timeout S]          wait for a queue started by hand
    nmtlab hypotheses sweep [-j N] [NAMES]        the catalogue in rounds (make sweep)
"""
from __future__ import annotations

import argparse
import shlex
import sys

from nmt.errors import UserError, main_entry

from . import catalogue as cat
from . import queue, sweep


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nmtlab hypotheses",
                                description="The lab report's hypotheses as DVC experiments.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("list", help="the catalogue as a table")
    s.add_argument("--md", action="store_true", help="a Markdown table with each command")
    s = sub.add_parser("commands", help="the `dvc exp run` line of each entry")
    s.add_argument("--queue", action="store_true", help="with --queue")
    s.add_argument("names", nargs="*")
    s = sub.add_parser("queue", help="queue the entries, each from the baseline")
    s.add_argument("--force", action="store_true", help="replace experiments of the same name "
                   "(and queue every replicate, done or not)")
    s.add_argument("--seeds", type=int, default=0,
                   help="N: each entry with training seeds 1..N, named ENTRY-sK; only the "
                        "missing or failed ones are queued")
    s.add_argument("--baseline-seeds", type=int, default=0,
                   help="M: the baseline with seeds 1..M instead; with seeds, named entries "
                        "come with the entries they are compared with")
    s.add_argument("names", nargs="*")
    for name, text in (("start", "start queue workers, wait until the queued experiments ran"),
                       ("wait", "wait until the experiments queued or running now have run"),
                       ("sweep", "the catalogue in rounds: 2 seeds an entry, more only for "
                                 "the undecided (docs/seeds.md); rerun to continue")):
        s = sub.add_parser(name, help=text)
        if name != "wait":
            s.add_argument("-j", "--jobs", type=int, default=1, help="experiments at a time")
        if name == "sweep":
            s.add_argument("names", nargs="*")
        s.add_argument("--timeout", type=float, default=0.0, help="seconds; 0 = no limit")
    return p


@main_entry
def main() -> None:
    args = parser().parse_args()
    if args.command in ("start", "wait"):
        queue.run_queue(getattr(args, "jobs", 0), args.timeout)
        return
    if args.command in ("queue", "sweep"):  # before the catalogue is checked against params
        for warning in queue.preflight():
            print(f"warning: {warning}", file=sys.stderr)
    catalogue = cat.load()
    if args.command == "list":
        print(cat.table(catalogue, markdown=args.md))
    elif args.command == "commands":
        for h in cat.select(catalogue, args.names):
            print(shlex.join(h.command(queue=args.queue)))
    elif args.command == "sweep":
        if args.jobs < 1:
            raise UserError("sweep: -j must be 1 or more")
        sweep.sweep(catalogue, args.names, args.jobs, timeout=args.timeout)
    else:
        if args.seeds < 0 or args.baseline_seeds < 0:
            raise UserError("queue: --seeds and --baseline-seeds must be 0 or more")
        queue.queue(queue.to_queue(catalogue, args.names, bool(args.seeds or args.baseline_seeds)),
                    force=args.force, seeds=args.seeds, baseline_seeds=args.baseline_seeds)


if __name__ == "__main__":
    main()
