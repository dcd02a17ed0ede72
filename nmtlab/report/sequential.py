"""Seeds only where they are needed: the decision rule of a sweep in rounds, one function
for the report, the sweep driver (nmtlab/hypotheses/sweep.py) and the calibration.

An arm is compared with its reference seed by seed (paired) at looks of 2, 4 and 6 seeds
(SEQUENTIAL). At each look, in this order:

1. **helps / hurts** when the paired test's two-sided p is below the alpha spent at that
   look (0.005, 0.01, 0.035: together 0.05, so by Bonferroni's inequality the arm's
   false-positive rate stays at or below 0.05 however the looks correlate; an
   alpha-spending boundary, Jennison & Turnbull 2000);
2. **no effect beyond ±δ** when the two one-sided tests at 0.05 put Δ inside ±min_effect
   (TOST; free: stopping without a helps/hurts cannot raise that rate);
3. **does not help (futility)** when, before the last look, the conditional power under the
   current trend (the chance that the last look calls "helps" if the seeds still to come
   behave like those so far) is below FUTILITY; free for the same reason. Not for an
   equivalence claim, whose hoped-for answer is 2;
4. otherwise the next look, or **no significant difference** at the last.

A sweep that is not run in rounds is one look at the seeds it has, at alpha 0.05 (FIXED).
`sequential_p` turns the looks into one p-value (the smallest p_j * 0.05 / alpha_j): below
0.05 exactly when a boundary was crossed, and valid for the corrections across hypotheses.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from . import significance as sig

OUTCOMES = ("pending", "helps", "hurts", "equivalent", "futile", "undecided")
PENDING, HELPS, HURTS, EQUIVALENT, FUTILE, UNDECIDED = range(len(OUTCOMES))


@dataclass(frozen=True)
class Design:
    looks: tuple[int, ...]  # seeds per arm at each look
    alphas: tuple[float, ...]  # two-sided alpha spent at each look; sum <= sig.ALPHA
    futility: float = 0.0  # stop below this conditional power; 0: never

    @property
    def max_seeds(self) -> int:
        return self.looks[-1]


SEQUENTIAL = Design(looks=(2, 4, 6), alphas=(0.005, 0.01, 0.035), futility=0.1)


def fixed(n: int) -> Design:
    """One look at n seeds, at the full alpha: a sweep that queued a fixed number of seeds."""
    return Design(looks=(n,), alphas=(sig.ALPHA,))


def decide(design: Design, exp: np.ndarray, base: np.ndarray,
           exp_pseudo: np.ndarray | None = None, base_pseudo: np.ndarray | None = None, *,
           higher_is_better: bool = True, margin: float = 0.0,
           equivalence_claim: bool = False) -> dict[str, np.ndarray]:
    """Replay the design on paired per-seed values exp[..., k], base[..., k] (seeds in the
    order they are run; the last axis may be shorter than design.max_seeds while a sweep
    runs). Returns, per leading index, `outcome` (index into OUTCOMES), `seeds` (the look
    it stopped at, or the last look reached), delta, se, df, p_value and alpha at that look,
    `sequential_p`, `tost_p` and `conditional_power`."""
    shape = exp.shape[:-1]
    out = {key: np.full(shape, np.nan) for key in
           ("delta", "se", "df", "p_value", "alpha", "tost_p", "conditional_power")}
    out["outcome"] = np.full(shape, PENDING)
    out["seeds"] = np.zeros(shape, dtype=int)
    out["sequential_p"] = np.ones(shape)
    open_ = np.ones(shape, dtype=bool)
    for j, (n, alpha) in enumerate(zip(design.looks, design.alphas)):
        if exp.shape[-1] < n:
            break
        res = sig.paired(exp[..., :n], base[..., :n],
                         None if exp_pseudo is None else exp_pseudo[..., :n, :],
                         None if base_pseudo is None else base_pseudo[..., :n, :])
        look = _look(design, j, res, higher_is_better, margin)
        outcome = _outcome(design, j, look, higher_is_better, equivalence_claim)
        for key in ("delta", "se", "df", "p_value", "tost_p", "conditional_power"):
            out[key] = np.where(open_, look[key], out[key])
        out["alpha"] = np.where(open_, alpha, out["alpha"])
        out["seeds"] = np.where(open_, n, out["seeds"])
        scaled = np.minimum(look["p_value"] * sig.ALPHA / alpha, 1.0)
        out["sequential_p"] = np.where(open_, np.fmin(out["sequential_p"], scaled),
                                       out["sequential_p"])
        out["outcome"] = np.where(open_, outcome, out["outcome"])
        open_ &= outcome == PENDING
    return out


def _look(design: Design, j: int, res: dict, higher_is_better: bool,
          margin: float) -> dict[str, np.ndarray]:
    """The statistics of one look: p, TOST p and the conditional power of the last look."""
    delta, se, df = res["delta"], res["se"], res["df"]
    n, last = design.looks[j], design.max_seeds
    toward = delta if higher_is_better else -delta  # Δ in the direction that helps
    crit = scipy_stats.t.ppf(1 - design.alphas[-1] / 2, last - 1)
    per_seed = se * np.sqrt(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (last * toward - crit * per_seed * np.sqrt(last)) / (per_seed * np.sqrt(last - n))
    power = np.where(per_seed > 0, scipy_stats.norm.cdf(z), (toward > 0).astype(float))
    return {"delta": delta, "se": se, "df": df, "p_value": sig.p_value(delta, se, df),
            "tost_p": sig.tost(delta, se, df, margin) if margin > 0 else np.full_like(delta, 1.0),
            "conditional_power": power if n < last else np.full_like(delta, np.nan)}


def _outcome(design: Design, j: int, look: dict, higher_is_better: bool,
             equivalence_claim: bool) -> np.ndarray:
    p, delta = look["p_value"], look["delta"]
    last = j == len(design.looks) - 1
    outcome = np.full(np.shape(delta), UNDECIDED if last else PENDING)
    futile = ~last & (look["conditional_power"] < design.futility) & (not equivalence_claim)
    outcome = np.where(futile, FUTILE, outcome)
    outcome = np.where(look["tost_p"] < sig.ALPHA, EQUIVALENT, outcome)
    better = (delta > 0) == higher_is_better
    crossed = (p < design.alphas[j]) & (delta != 0)
    return np.where(crossed, np.where(better, HELPS, HURTS), outcome)
