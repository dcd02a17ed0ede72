"""`nmtlab hypotheses sweep` (make sweep): the catalogue in rounds, seeds only where they are
needed (nmtlab/report/sequential.py has the rule, docs/seeds.md the measured calibration).

Each round: write the records of finished runs (this code version), replay the decision
rule on them, and queue for every entry still undecided the seeds of its next look (2, then
4, then 6), with the seeds its reference (the baseline, or its `against`) needs to pair
with; then run the queue and wait. It ends when every entry is decided or at its last look.
Everything it decides from is in the records and DVC, so rerunning it continues a sweep cut
short where it stopped; a round queues nothing that is recorded, finished, queued or running.
"""
from __future__ import annotations

from pathlib import Path

from nmt.errors import UserError

from .. import dvcrun, sweeplog
from ..report import compare, experiments, sequential
from .catalogue import BASELINE, Hypothesis, references, select
from .queue import OPEN, queue_runs, run_queue, run_states


def targets(catalogue: list[Hypothesis], chosen: list[Hypothesis],
            group: compare.Group | None) -> dict[str, int]:
    """Seeds each entry needs now: for its own comparison, the next look if undecided (what
    it has if decided), and as a reference, what each entry compared with it needs for
    theirs (seeds pair by number); the baseline at least the first look."""
    design = sequential.SEQUENTIAL
    own = {h.name: _next_look(group.named.get(h.name) if group else None, design)
           for h in chosen if h.name != BASELINE}
    need = {h.name: own.get(h.name, 0) for h in references(catalogue, chosen)}
    for h in chosen:
        if h.name in own:
            need[h.against] = max(need[h.against], own[h.name])
    need[BASELINE] = max(need[BASELINE], design.looks[0])
    return need


def _next_look(comparison: compare.Comparison | None, design: sequential.Design) -> int:
    if comparison is None or comparison.kind not in ("paired", compare.SAME):
        return design.looks[0]  # not yet two seeds that pair
    if comparison.outcome != "pending":
        return comparison.seeds  # decided, or the same training as its reference
    later = [n for n in design.looks if n > comparison.seeds]
    return later[0] if later else design.max_seeds


def _depth(catalogue: list[Hypothesis], h: Hypothesis) -> int:
    """How many `against` links lead from `h` to the baseline."""
    by_name = {e.name: e for e in catalogue}
    depth = 0
    while h.against:
        depth, h = depth + 1, by_name[h.against]
    return depth


def current_group(catalogue: list[Hypothesis], code: str, repo: Path) -> compare.Group | None:
    """The records of this code version, analysed with the sequential design: the group with
    the most runs (runs of another provenance are kept apart, as the report keeps them)."""
    folder = repo / experiments.RECORDS
    runs = [r for r in experiments.load_records(folder) if r.code == code] \
        if folder.is_dir() else []
    groups = compare.group_runs(runs, catalogue, sequential_codes={code}) if runs else []
    return max(groups, key=lambda g: sum(len(a.runs) for a in g.all_arms), default=None)


def sweep(catalogue: list[Hypothesis], names: list[str], jobs: int, repo: Path = Path("."),
          timeout: float = 0.0, poll: float = 30.0) -> None:
    """Rounds until nothing is left to run (module docstring), after `preflight`."""
    code = experiments.code_hash("HEAD", str(repo))
    chosen = [h for h in select(catalogue, names) if h.name != BASELINE] or \
        [h for h in catalogue if h.name != BASELINE]
    recorder = sweeplog.Recorder(jobs, repo / sweeplog.LOG)
    recorder.begin()
    while True:
        runs = experiments.parse_exp_show(dvcrun.exp_show(repo))
        experiments.collect(runs, str(repo), repo / experiments.RECORDS, code=code)
        group = current_group(catalogue, code, repo)
        need = targets(catalogue, chosen, group)
        states = run_states(repo, code)
        # references first: an entry that reuses its reference's training (DVC's run cache)
        # then finds it finished
        order = sorted((h for h in catalogue if h.name in need),
                       key=lambda h: _depth(catalogue, h))
        plan = [(h, k) for h in order for k in range(1, need[h.name] + 1)]
        queued, _ = queue_runs(plan, states, repo)
        waiting = sum(s in OPEN for s in states.values())
        if not queued and not waiting:
            break
        sweeplog.add_round(code, need, queued, repo / sweeplog.ROUNDS)
        print(f"round: {queued} runs queued; seeds wanted: "
              + ", ".join(f"{n} {k}" for n, k in need.items()), flush=True)
        run_queue(jobs, timeout, poll, repo, recorder=recorder)
    _summary(chosen, group)


def _summary(chosen: list[Hypothesis], group: compare.Group | None) -> None:
    if group is None:
        raise UserError("sweep: no runs recorded for this code version")
    for h in chosen:
        c = group.named.get(h.name)
        print(f"{h.name}: {c.verdict if c else 'no runs'}"
              + (f" ({c.seeds} seeds)" if c and c.seeds else ""))
    print("the sweep is done; `make report` writes reports/experiments.md")
