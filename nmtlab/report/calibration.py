"""The tests measured on a null that looks like the data (`nmtlab report --calibrate`).

The null model is built from the baseline's runs (their per-sentence BLEU statistics and
best validation losses):

- **sentence effect and run-by-sentence interaction**: a simulated run takes, for each test
  sentence, that sentence's statistics from one of the baseline runs drawn at random, so
  each sentence keeps its own difficulty and length, and its spread across runs is the
  interaction (and the n-gram counting noise) the real runs show;
- **test set**: each simulated comparison draws its own test set of N sentences, with
  replacement, from the N of the records; both arms are scored on it;
- **seed effect**: each simulated run's BLEU is shifted by a normal seed effect whose
  variance is the baseline's seed variance of BLEU less what the draws above already give,
  so a simulated run varies as much as a real one;
- **validation loss**: normal, with the baseline's seed spread (one value per run).

On it, thousands of A/A comparisons (both arms from the same model) at the sweep's designs
give each test's false-positive rate at alpha 0.05 and the coverage of its 95% interval,
and the sequential procedure (sequential.SEQUENTIAL) gives its false-positive rate,
its power and the seeds it spends per arm. Fixed RNG seeds: the same records give the same
figures.
"""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nmt import fsio

from . import sequential
from . import significance as sig

CALIBRATION = Path("reports") / "calibration.json"
FORMAT = 1
RNG_SEED = 20261129
REPLICATIONS = 4000  # A/A comparisons per design (BLEU)
VAL_LOSS_FACTOR = 10  # ... times as many for the validation loss, cheap to simulate
SEQUENTIAL_REPLICATIONS = 4000  # simulated arms per effect size
CHUNK = 200  # comparisons simulated at once (memory: CHUNK x runs x N x 10 floats)
PREVIOUS_SAMPLES = 200  # bootstrap resamples of the previous report's test, per comparison
# (arm runs, reference runs, paired): the sweep in rounds looks at 2, 4, 6 paired seeds; the
# previous sweep compared 3 seeds with the baseline's 7, unpaired.
DESIGNS = ((2, 2, True), (3, 3, True), (4, 4, True), (5, 5, True), (6, 6, True), (3, 7, False))
TESTS = ("seeds", "seeds + sentences")
CHOSEN = {"bleu": "seeds + sentences", "val_loss": "seeds"}  # see docs/seeds.md
MIN_BASELINE_RUNS = 3


@dataclass
class NullModel:
    table: np.ndarray  # (m, N, 10) float32: the baseline runs' statistics with n-gram totals
    seed_sd: float  # of the seed effect added to each simulated run's BLEU
    val_loss_sd: float
    components: dict[str, float]  # BLEU² per run: observed seed variance, its parts

    @classmethod
    def fit(cls, stats: np.ndarray, val_losses: np.ndarray, rng: np.random.Generator,
            draws: int = 2000) -> NullModel:
        """The model of (m, N, 6) baseline statistics and their m best validation losses."""
        table = sig.with_totals(stats).astype(np.float32)
        model = cls(table, 0.0, float(np.std(val_losses, ddof=1)), {})
        sentences = np.broadcast_to(np.arange(stats.shape[1]), (CHUNK, stats.shape[1]))
        drawn = np.concatenate([model.bleu_runs(rng, sentences, 1)[0][:, 0]
                                for _ in range(draws // CHUNK)]).var(ddof=1)
        observed = float(sig.corpus_bleu(stats).var(ddof=1))
        model.seed_sd = float(np.sqrt(max(observed - drawn, 0.0)))
        interaction = float(sig.interaction_ms(sig.pseudo_values(stats)) / stats.shape[1])
        model.components = {"seed_variance": observed, "interaction": interaction,
                            "drawn": float(drawn), "seed_effect": model.seed_sd ** 2}
        return model

    @property
    def sentences(self) -> int:
        return self.table.shape[1]

    def bleu_runs(self, rng: np.random.Generator, sentences: np.ndarray, n: int,
                  shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(sims, n) BLEU and (sims, n, N) pseudo-values of simulated runs on the test sets
        `sentences` (sims, N), shifted by `shift`."""
        pick = rng.integers(0, self.table.shape[0], (len(sentences), n, sentences.shape[1]))
        corpus, pseudo = sig.jackknife(self.table[pick, sentences[:, None, :]])
        seed = rng.normal(0.0, self.seed_sd, (len(sentences), n)) + shift
        return corpus + seed, pseudo + seed[..., None]

    def test_sets(self, rng: np.random.Generator, sims: int) -> np.ndarray:
        return rng.integers(0, self.sentences, (sims, self.sentences))


def apply_test(name: str, exp: tuple, base: tuple, paired: bool) -> dict[str, np.ndarray]:
    """One of TESTS on simulated (values, pseudo-values) of two arms."""
    pseudo = name == "seeds + sentences"
    fn = sig.paired if paired else sig.unpaired
    return fn(exp[0], base[0], exp[1] if pseudo else None, base[1] if pseudo else None)


def previous_test(exp: tuple, base: tuple) -> dict[str, np.ndarray]:
    """The previous report's pooled test, to measure it: Welch's t over the seeds plus a
    paired bootstrap variance of the sentences (all runs resampled alike) treated as known,
    which also raised the Welch–Satterthwaite degrees of freedom."""
    (e_runs, e_stats), (b_runs, b_stats) = exp, base
    v_e, v_b = e_runs.var(axis=-1, ddof=1) / e_runs.shape[-1], b_runs.var(axis=-1, ddof=1) / \
        b_runs.shape[-1]
    sentence = (e_stats - b_stats).var(axis=-1, ddof=1)
    var = v_e + v_b + sentence
    df = var ** 2 / (v_e ** 2 / (e_runs.shape[-1] - 1) + v_b ** 2 / (b_runs.shape[-1] - 1))
    return {"delta": e_runs.mean(axis=-1) - b_runs.mean(axis=-1), "se": np.sqrt(var), "df": df}


def _bootstrap_means(model: NullModel, rng: np.random.Generator, sentences: np.ndarray,
                     n: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Simulated runs' BLEU (sims, n) and their mean BLEU in each bootstrap resample of the
    sentences, `weights` (B, N) (sims, B), for previous_test."""
    pick = rng.integers(0, model.table.shape[0], (len(sentences), n, sentences.shape[1]))
    full = model.table[pick, sentences[:, None, :]]
    seed = rng.normal(0.0, model.seed_sd, (len(sentences), n))
    resampled = sig.bleu(np.matmul(weights, full))  # (sims, n, B)
    return sig.bleu(full.sum(axis=-2)) + seed, resampled.mean(axis=-2)


def null_designs(model: NullModel, rng: np.random.Generator, replications: int,
                 val_losses: bool = True) -> list[dict[str, Any]]:
    """False-positive rate and 95% coverage of each test at each design, on A/A comparisons;
    the previous report's test at its own design (3 vs 7) too."""
    rows = []
    for n_e, n_b, paired in DESIGNS:
        hits = {t: np.zeros(2) for t in TESTS}
        for sims in _chunks(replications):
            sentences = model.test_sets(rng, sims)
            exp, base = model.bleu_runs(rng, sentences, n_e), model.bleu_runs(rng, sentences, n_b)
            for name in TESTS:
                hits[name] += _fp_cover(apply_test(name, exp, base, paired), 0.0)
        design = _design_name(n_e, n_b, paired)
        rows += [_rate_row("bleu", design, name, hits[name], replications) for name in TESTS]
        if val_losses:
            e, b = (rng.normal(0.0, model.val_loss_sd, (replications * VAL_LOSS_FACTOR, k))
                    for k in (n_e, n_b))
            val = _fp_cover((sig.paired if paired else sig.unpaired)(e, b), 0.0)
            rows.append(_rate_row("val_loss", design, "seeds", val,
                                  replications * VAL_LOSS_FACTOR))
    rows.append(_previous(model, rng, replications // 4))
    return rows


def _previous(model: NullModel, rng: np.random.Generator, replications: int) -> dict:
    # one set of resamples for every comparison, as the previous report drew them
    weights = sig.resample_weights(model.sentences, PREVIOUS_SAMPLES, sig.BOOTSTRAP_SEED)
    weights = weights.astype(np.float32)
    hits = np.zeros(2)
    for sims in _chunks(replications, CHUNK // 4):
        sentences = model.test_sets(rng, sims)
        exp = _bootstrap_means(model, rng, sentences, 3, weights)
        base = _bootstrap_means(model, rng, sentences, 7, weights)
        hits += _fp_cover(previous_test(exp, base), 0.0)
    return _rate_row("bleu", _design_name(3, 7, False), "previous report", hits, replications)


def sequential_runs(model: NullModel, rng: np.random.Generator, replications: int,
                    metric: str, effects: tuple[float, ...], margin: float,
                    design: sequential.Design = sequential.SEQUENTIAL) -> list[dict[str, Any]]:
    """The whole procedure on simulated arms with a true effect (in the metric's better
    direction) of each size: how often it ends in each outcome, and the arm's mean seeds."""
    rows = []
    higher = metric == "bleu"
    for effect in effects:
        counts, seeds = np.zeros(len(sequential.OUTCOMES)), 0.0
        for sims in _chunks(replications):
            exp, base = _sequential_arms(model, rng, sims, metric, effect if higher else -effect,
                                         design.max_seeds)
            out = sequential.decide(design, exp[0], base[0], exp[1], base[1],
                                    higher_is_better=higher, margin=margin)
            counts += np.bincount(out["outcome"].ravel(), minlength=len(counts))
            seeds += float(out["seeds"].sum())
        rows.append({"metric": metric, "effect": effect, "margin": margin,
                     "replications": replications, "mean_seeds": seeds / replications,
                     **{o: float(c / replications) for o, c in zip(sequential.OUTCOMES, counts)}})
    return rows


def _sequential_arms(model: NullModel, rng: np.random.Generator, sims: int, metric: str,
                     shift: float, n: int) -> tuple[tuple, tuple]:
    """(values, pseudo-values or None) of an arm shifted by `shift` and of its reference."""
    if metric == "val_loss":
        return ((rng.normal(shift, model.val_loss_sd, (sims, n)), None),
                (rng.normal(0.0, model.val_loss_sd, (sims, n)), None))
    sentences = model.test_sets(rng, sims)
    exp, base = model.bleu_runs(rng, sentences, n, shift), model.bleu_runs(rng, sentences, n)
    if CHOSEN["bleu"] == "seeds":
        return (exp[0], None), (base[0], None)
    return exp, base


def _chunks(total: int, size: int = CHUNK) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


def _fp_cover(res: dict[str, np.ndarray], truth: float) -> np.ndarray:
    """[false positives, intervals covering `truth`] of a batch of tests."""
    p = sig.p_value(res["delta"], res["se"], res["df"])
    low, high = sig.interval(res["delta"], res["se"], res["df"])
    return np.array([np.sum(p < sig.ALPHA), np.sum((low <= truth) & (truth <= high))])


def _rate_row(metric: str, design: str, test_name: str, hits: np.ndarray,
              replications: int) -> dict[str, Any]:
    fpr, cover = hits / replications
    return {"metric": metric, "design": design, "test": test_name,
            "replications": replications, "false_positive_rate": float(fpr),
            "fpr_se": float(np.sqrt(fpr * (1 - fpr) / replications)),
            "coverage": float(cover), "coverage_se": float(np.sqrt(cover * (1 - cover)
                                                                  / replications))}


def _design_name(n_e: int, n_b: int, paired: bool) -> str:
    return f"{n_e} seeds, paired" if paired else f"{n_e} vs {n_b} runs, unpaired"


def calibrate(baseline: dict[str, Any], margins: dict[str, float],
              replications: int = REPLICATIONS,
              seed: int = RNG_SEED) -> dict[str, Any]:
    """Every figure of the calibration, as the report and calibration.json hold them.
    baseline: runs (names), stats (m, N, 6), val_losses (m,), code (its code version)."""
    rng = np.random.default_rng(seed)
    model = NullModel.fit(baseline["stats"], baseline["val_losses"], rng)
    sequential_rows = [
        row for metric, effects in (("bleu", _effects(margins["bleu"])),
                                    ("val_loss", _effects(margins["val_loss"])))
        for row in sequential_runs(model, rng, SEQUENTIAL_REPLICATIONS * replications
                                   // REPLICATIONS, metric, effects, margins[metric])]
    return {
        "format": FORMAT,
        "made": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "baseline": {"runs": list(baseline["runs"]), "code": baseline["code"],
                     "sentences": model.sentences},
        "components": model.components, "val_loss_sd": model.val_loss_sd,
        "rng_seed": seed, "chosen": CHOSEN,
        "design": {"looks": list(sequential.SEQUENTIAL.looks),
                   "alphas": list(sequential.SEQUENTIAL.alphas),
                   "futility": sequential.SEQUENTIAL.futility},
        "null": null_designs(model, rng, replications),
        "sequential": sequential_rows,
    }


def _effects(margin: float) -> tuple[float, ...]:
    """True effects the sequential procedure is simulated at: none, δ, 2δ, 4δ."""
    return (0.0, margin, 2 * margin, 4 * margin)


def write(result: dict[str, Any], path: Path = CALIBRATION) -> None:
    fsio.write_text(path, json.dumps(result, indent=1) + "\n")


def read(path: Path = CALIBRATION) -> dict[str, Any] | None:
    """The committed calibration, or None without one (or of another format)."""
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return result if result.get("format") == FORMAT else None
