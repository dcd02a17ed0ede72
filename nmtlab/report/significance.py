"""Significance of a hypothesis against the baseline: BLEU from per-sentence statistics, the
single-run paired bootstrap, the pooled test over training seeds and test sentences, and the
multiple-comparison corrections.

Every function works on numpy arrays and broadcasts over leading axes, so the unit tests
can run thousands of simulated comparisons at once.

Per-sentence statistics (STATS) are sacreBLEU's sufficient statistics of one sentence:
hypothesis and reference length and the matched n-grams of orders 1-4. The n-gram totals
follow from the hypothesis length (a sentence of L tokens has max(0, L - n + 1) n-grams),
so they are not stored.
"""
from __future__ import annotations

import itertools

import numpy as np
from scipy import stats as scipy_stats

from sacrebleu.metrics import BLEU

ALPHA = 0.05
BOOTSTRAP_SAMPLES = 1000  # sacreBLEU's --paired-bs-n default
BOOTSTRAP_SEED = 12345  # sacreBLEU's default SACREBLEU_SEED; our draws are our own
MIN_RUNS = 2  # per arm, for the pooled test (a spread needs two runs)
ORDER = 4
STATS = ("hyp_len", "ref_len", "matches_1", "matches_2", "matches_3", "matches_4")

SINGLE_RUN_METHOD = ("paired bootstrap over test sentences (Koehn 2004; sacreBLEU "
                     "`--paired-bs`), test-set noise only")
POOLED_METHOD = (
    "Δ of the mean over training seeds; its variance adds the seeds' spread in each arm "
    "(s²/n, as in Welch's t-test) and the test-sentence spread from a paired bootstrap over "
    "sentences (all runs of both arms resampled with the same sentence indices, each run's BLEU "
    "recomputed from its summed per-sentence statistics; Koehn 2004, Efron & Tibshirani 1993); "
    "p and the 95% interval from Student's t with Welch–Satterthwaite degrees of freedom. "
    "Several runs per configuration and a test counting both sources: Clark et al. 2011 "
    "(MultEval)")
SEEDS_ONLY_METHOD = ("Welch's t-test over the per-seed values (no per-sentence statistics: "
                     "training-seed variance only)")


# ---- BLEU from sufficient statistics -----------------------------------------------------
def sentence_stats(hyps: list[str], refs: list[str], tokenize: str = "13a",
                   lowercase: bool = False) -> np.ndarray:
    """(N, 6) int array of STATS per sentence, from sacreBLEU's public sentence_score."""
    # effective_order leaves the counts alone; it silences sacreBLEU's sentence-level warning
    metric = BLEU(tokenize=tokenize, lowercase=lowercase, effective_order=True)
    rows = []
    for hyp, ref in zip(hyps, refs, strict=True):
        s = metric.sentence_score(hyp, [ref])
        rows.append([s.sys_len, s.ref_len, *s.counts])
    return np.array(rows, dtype=np.int64).reshape(-1, len(STATS))


def with_totals(stats: np.ndarray) -> np.ndarray:
    """(..., N, 6) STATS -> (..., N, 10) floats: STATS then the n-gram totals of orders 1-4."""
    orders = np.arange(1, ORDER + 1)
    totals = np.clip(stats[..., :1] - orders + 1, 0, None)
    return np.concatenate([stats, totals], axis=-1).astype(np.float64)


def bleu(summed: np.ndarray) -> np.ndarray:
    """Corpus BLEU (..., ) from summed (..., 10) statistics, as sacreBLEU's default BLEU
    computes it: brevity penalty, 'exp' smoothing (mteval-v13a: each order without a match
    gets 1 / (2^k * total)), geometric mean of the 4 precisions."""
    sys_len, ref_len = summed[..., 0], summed[..., 1]
    matches, totals = summed[..., 2:2 + ORDER], summed[..., 2 + ORDER:]
    no_match = matches == 0
    halvings = 2.0 ** np.cumsum(no_match, axis=-1)
    safe_totals = np.where(totals > 0, totals, 1.0)
    precision = np.where(no_match, 100.0 / (halvings * safe_totals), 100.0 * matches / safe_totals)
    # An order with no n-grams at all (every sentence shorter) makes BLEU 0, as in sacreBLEU.
    log_precision = np.where(totals > 0, np.log(np.where(totals > 0, precision, 1.0)), -np.inf)
    short = (sys_len < ref_len) & (sys_len > 0)
    bp = np.where(short, np.exp(1.0 - ref_len / np.where(sys_len > 0, sys_len, 1.0)), 1.0)
    bp = np.where((sys_len == 0) & (ref_len > 0), 0.0, bp)
    score = bp * np.exp(log_precision.mean(axis=-1))
    return np.where(matches.sum(axis=-1) > 0, score, 0.0)


def corpus_bleu(stats: np.ndarray) -> np.ndarray:
    """BLEU of (..., N, 6) per-sentence STATS."""
    return bleu(with_totals(stats).sum(axis=-2))


def resample_weights(n_sentences: int, n_samples: int, seed: int) -> np.ndarray:
    """(n_samples, n_sentences): how often each sentence is drawn in each bootstrap resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_sentences, np.full(n_sentences, 1.0 / n_sentences),
                           size=n_samples).astype(np.float64)


def resampled_bleu(stats: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(..., N, 6) STATS and (B, N) weights -> (..., B) BLEU of each resample."""
    return bleu(np.matmul(weights, with_totals(stats)))


# ---- one run against one run: test-set noise only -----------------------------------------
def paired_bootstrap(base: np.ndarray, exp: np.ndarray, n_samples: int = BOOTSTRAP_SAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> dict[str, np.ndarray]:
    """Koehn's (2004) paired bootstrap of two systems' (..., N, 6) STATS on one test set, as
    sacreBLEU's `--paired-bs` computes its p: the resampled |Δ| centred on their mean, counted
    against the observed |Δ|, (count + 1) / (B + 1); a resample that ties the observed |Δ|
    counts (sacreBLEU counts only larger ones, which gives two identical systems p = 0.001).
    Returns base_bleu, exp_bleu, delta,
    delta_low and delta_high (2.5-97.5% of the resampled Δ) and p_value, as arrays."""
    weights = resample_weights(base.shape[-2], n_samples, seed)
    base_bleu, exp_bleu = corpus_bleu(base), corpus_bleu(exp)
    diffs = resampled_bleu(exp, weights) - resampled_bleu(base, weights)
    delta = exp_bleu - base_bleu
    centred = np.abs(diffs) - np.abs(diffs).mean(axis=-1, keepdims=True)
    p = ((centred >= np.abs(delta)[..., None]).sum(axis=-1) + 1) / (n_samples + 1)
    diffs = np.sort(diffs, axis=-1)
    cut = n_samples // 40  # sacreBLEU's estimate_ci: 2.5% each side
    return {"base_bleu": base_bleu, "exp_bleu": exp_bleu, "delta": delta,
            "delta_low": diffs[..., cut], "delta_high": diffs[..., n_samples - cut - 1],
            "p_value": p}


# ---- several runs per arm: training seeds and test sentences --------------------------------
def sentence_variance(base: np.ndarray, exp: np.ndarray, n_samples: int = BOOTSTRAP_SAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Variance of Δ (mean BLEU over the experiment's runs minus the baseline's) over paired
    bootstrap resamples of the test sentences, the runs held fixed. base: (..., n_a, N, 6),
    exp: (..., n_b, N, 6) STATS on the same test set."""
    weights = resample_weights(base.shape[-2], n_samples, seed)
    diffs = resampled_bleu(exp, weights).mean(axis=-2) - resampled_bleu(base, weights).mean(axis=-2)
    return diffs.var(axis=-1, ddof=1)


def welch(base: np.ndarray, exp: np.ndarray, extra_var: np.ndarray | float = 0.0,
          alpha: float = ALPHA) -> dict[str, np.ndarray]:
    """Δ = mean(exp) - mean(base) over the last axis (one value per run), its standard error
    from both arms' spread (s²/n each) plus `extra_var` (a variance known without error, e.g.
    the test sentences'), two-sided p and the 1 - alpha interval from Student's t with
    Welch–Satterthwaite degrees of freedom. NaN where an arm has fewer than MIN_RUNS runs."""
    n_a, n_b = base.shape[-1], exp.shape[-1]
    delta = exp.mean(axis=-1) - base.mean(axis=-1)
    if min(n_a, n_b) < MIN_RUNS:
        nan = np.full(np.shape(delta), np.nan)
        return {"delta": delta, "se": nan, "df": nan, "p_value": nan, "low": nan, "high": nan}
    v_a, v_b = base.var(axis=-1, ddof=1) / n_a, exp.var(axis=-1, ddof=1) / n_b
    var = v_a + v_b + extra_var
    se = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = var ** 2 / (v_a ** 2 / (n_a - 1) + v_b ** 2 / (n_b - 1))
        t = np.abs(delta) / se
    df = np.where(np.isfinite(df), df, 1e9)  # no seed spread at all: the normal limit
    t = np.where(se > 0, t, np.where(delta == 0, 0.0, np.inf))
    p = 2 * scipy_stats.t.sf(t, df)
    half = scipy_stats.t.ppf(1 - alpha / 2, df) * se
    return {"delta": delta, "se": se, "df": df, "p_value": p, "low": delta - half,
            "high": delta + half}


def pooled_bleu(base: np.ndarray, exp: np.ndarray, n_samples: int = BOOTSTRAP_SAMPLES,
                seed: int = BOOTSTRAP_SEED, alpha: float = ALPHA) -> dict[str, np.ndarray]:
    """The pooled test of test BLEU (POOLED_METHOD) from (..., n_a, N, 6) and (..., n_b, N, 6)
    per-run STATS; adds 'base_runs', 'exp_runs' (each run's BLEU) and 'se_sentences'."""
    base_runs, exp_runs = corpus_bleu(base), corpus_bleu(exp)
    extra = 0.0
    if min(base.shape[-3], exp.shape[-3]) >= MIN_RUNS:
        extra = sentence_variance(base, exp, n_samples, seed)
    out = welch(base_runs, exp_runs, extra, alpha)
    return {**out, "base_runs": base_runs, "exp_runs": exp_runs,
            "se_sentences": np.sqrt(extra)}


# ---- verdicts and corrections -----------------------------------------------------------
def verdict(delta: float, p_value: float, higher_is_better: bool = True,
            alpha: float = ALPHA) -> str:
    if np.isnan(p_value):
        return "too few runs"
    if p_value >= alpha or delta == 0:
        return "no significant difference"
    return "helps" if (delta > 0) == higher_is_better else "hurts"


def agreeing(base_runs: np.ndarray, exp_runs: np.ndarray) -> int:
    """How many of the experiment's runs lie on the same side of the baseline's mean as Δ."""
    delta = exp_runs.mean() - base_runs.mean()
    return int(np.sum(np.sign(exp_runs - base_runs.mean()) == np.sign(delta)))


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (Holm 1979): controls the family-wise error rate."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    m = len(p)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order]).clip(max=1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (1995): controls the false discovery rate."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    m = len(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1].clip(max=1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out


def aa_splits(n: int, size: int = 3) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every split of runs 0..n-1 into two disjoint groups of `size`, each split once
    (n = 6, size = 3: C(6,3) / 2 = 10 splits)."""
    out = []
    for first in itertools.combinations(range(n), size):
        rest = [i for i in range(n) if i not in first]
        for second in itertools.combinations(rest, size):
            if (second, first) not in out:
                out.append((first, second))
    return out
