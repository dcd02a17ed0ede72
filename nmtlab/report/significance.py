"""Significance of a hypothesis against its reference arm: BLEU from per-sentence statistics,
the single-run paired bootstrap, the tests over training seeds (paired by seed, or unpaired),
with or without the test sentences' main effect, equivalence (TOST), power, and the
corrections across hypotheses.

Every function works on numpy arrays and broadcasts over leading axes, so the calibration
(nmtlab/report/calibration.py) runs thousands of simulated comparisons at once.

Per-sentence statistics (STATS) are sacreBLEU's sufficient statistics of one sentence:
hypothesis and reference length and the matched n-grams of orders 1-4. The n-gram totals
follow from the hypothesis length (a sentence of L tokens has max(0, L - n + 1) n-grams),
so they are not stored.

The tests (docs/seeds.md has the derivation and the measured calibration):

- **seeds**: Δ_k = value(arm seed k) - value(reference seed k), a paired t on the n per-seed
  differences (n - 1 degrees of freedom); unpaired, Welch's t on the two arms' values
  (min(n) - 1 degrees of freedom). On a fixed test set each Δ_k already holds the
  run-by-sentence noise, so nothing is added for it.
- **seeds + sentences**: the same, plus the variance of the sentence main effect of Δ (would
  another test set agree?), from a two-way analysis of variance (seed x sentence) of the
  runs' jackknife pseudo-values: (MS_sentence - MS_interaction) / (n N), never below 0, so
  the run-by-sentence interaction is not counted twice. It widens the interval but does not
  raise the degrees of freedom (letting it do so, by Welch-Satterthwaite, was measured
  liberal at 2 seeds).
"""
from __future__ import annotations

import numpy as np
from scipy import stats as scipy_stats

from sacrebleu.metrics import BLEU

ALPHA = 0.05
BOOTSTRAP_SAMPLES = 1000  # sacreBLEU's --paired-bs-n default
BOOTSTRAP_SEED = 12345  # sacreBLEU's default SACREBLEU_SEED; our draws are our own
MIN_RUNS = 2  # pairs (or runs a side) for a test over seeds: a spread needs two
ORDER = 4
STATS = ("hyp_len", "ref_len", "matches_1", "matches_2", "matches_3", "matches_4")

SINGLE_RUN_METHOD = ("paired bootstrap over test sentences (Koehn 2004; sacreBLEU "
                     "`--paired-bs`), test-set noise only")


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


def pseudo_values(stats: np.ndarray) -> np.ndarray:
    """(..., N, 6) STATS -> (..., N) jackknife pseudo-values of corpus BLEU (Quenouille,
    Tukey): N * BLEU - (N - 1) * BLEU without sentence i. Their mean is (nearly) the corpus
    BLEU and their spread each sentence's share of it, so BLEU's sentence-level variance
    components can be estimated as for an average."""
    return jackknife(with_totals(stats))[1]


def jackknife(full: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(corpus BLEU (...,), pseudo-values (..., N)) of (..., N, 10) statistics with totals."""
    summed = full.sum(axis=-2, keepdims=True)
    n = full.shape[-2]
    corpus = bleu(summed)
    return corpus[..., 0], n * corpus - (n - 1) * bleu(summed - full)


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


# ---- several runs: training seeds, and the sentences' main effect --------------------------
def paired(exp: np.ndarray, base: np.ndarray, exp_pseudo: np.ndarray | None = None,
           base_pseudo: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Paired by seed: exp[..., k] and base[..., k] are the same seed's values (n on the last
    axis). Returns delta (mean of the per-seed differences), se and df (n - 1). With
    (..., n, N) pseudo-values, se adds the sentence main effect of Δ (module docstring),
    which leaves df alone. NaN se and df with fewer than MIN_RUNS pairs."""
    d = exp - base
    n = d.shape[-1]
    delta = d.mean(axis=-1)
    if n < MIN_RUNS:
        nan = np.full(np.shape(delta), np.nan)
        return {"delta": delta, "se": nan, "df": nan}
    var = d.var(axis=-1, ddof=1) / n
    if exp_pseudo is not None:
        var = var + sentence_variance_paired(exp_pseudo - base_pseudo)
    return {"delta": delta, "se": np.sqrt(var), "df": np.full(np.shape(delta), n - 1.0)}


def unpaired(exp: np.ndarray, base: np.ndarray, exp_pseudo: np.ndarray | None = None,
             base_pseudo: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Welch's t over the runs of two arms (runs on the last axis), for arms whose seeds do
    not pair, with the conservative min(n_exp, n_base) - 1 degrees of freedom (Hsu 1938;
    Welch–Satterthwaite's measured 5.4% false positives at 3 vs 7 runs on the calibration's
    null, docs/seeds.md); pseudo-values (..., n, N) add the sentence main effect to se as
    `paired` does."""
    n_e, n_b = exp.shape[-1], base.shape[-1]
    delta = exp.mean(axis=-1) - base.mean(axis=-1)
    if min(n_e, n_b) < MIN_RUNS:
        nan = np.full(np.shape(delta), np.nan)
        return {"delta": delta, "se": nan, "df": nan}
    var = exp.var(axis=-1, ddof=1) / n_e + base.var(axis=-1, ddof=1) / n_b
    if exp_pseudo is not None:
        var = var + sentence_variance_unpaired(exp_pseudo, base_pseudo)
    return {"delta": delta, "se": np.sqrt(var),
            "df": np.full(np.shape(delta), min(n_e, n_b) - 1.0)}


def interaction_ms(x: np.ndarray) -> np.ndarray:
    """Mean square of the seed x sentence interaction of (..., n, N) values."""
    n, m = x.shape[-2:]
    resid = (x - x.mean(axis=-2, keepdims=True) - x.mean(axis=-1, keepdims=True)
             + x.mean(axis=(-2, -1), keepdims=True))
    return (resid ** 2).sum(axis=(-2, -1)) / ((n - 1) * (m - 1))


def sentence_variance_paired(d: np.ndarray) -> np.ndarray:
    """Variance of the sentence main effect of the mean Δ, from the (..., n, N) per-seed,
    per-sentence differences of pseudo-values: (MS_sentence - MS_interaction) / (n N), at
    least 0 (E[MS_sentence] = σ²_interaction + n σ²_sentence, E[MS_interaction] =
    σ²_interaction)."""
    n, m = d.shape[-2:]
    ms_sentence = n * d.mean(axis=-2).var(axis=-1, ddof=1)
    return np.maximum(ms_sentence - interaction_ms(d), 0.0) / (n * m)


def sentence_variance_unpaired(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """As sentence_variance_paired for two unpaired arms' (..., n_a, N) and (..., n_b, N)
    pseudo-values: the spread of the per-sentence mean difference less both arms'
    interaction shares."""
    n_a, n_b, m = a.shape[-2], b.shape[-2], a.shape[-1]
    spread = (a.mean(axis=-2) - b.mean(axis=-2)).var(axis=-1, ddof=1)
    excess = spread - interaction_ms(a) / n_a - interaction_ms(b) / n_b
    return np.maximum(excess, 0.0) / m


def p_value(delta: np.ndarray, se: np.ndarray, df: np.ndarray) -> np.ndarray:
    """Two-sided p of Δ against 0 from Student's t; NaN without a spread (too few runs)."""
    delta, se = np.asarray(delta, dtype=float), np.asarray(se, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, np.abs(delta) / se, np.where(delta == 0, 0.0, np.inf))
        return np.where(np.isnan(se), np.nan, 2 * scipy_stats.t.sf(t, df))


def interval(delta: np.ndarray, se: np.ndarray, df: np.ndarray,
             level: float | np.ndarray = 1 - ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """The two-sided `level` interval of Δ."""
    half = scipy_stats.t.ppf(0.5 + np.asarray(level) / 2, df) * se
    return delta - half, delta + half


def tost(delta: np.ndarray, se: np.ndarray, df: np.ndarray,
         margin: np.ndarray | float) -> np.ndarray:
    """p of the two one-sided tests (Schuirmann 1987) that |true Δ| < margin: below ALPHA
    means "no effect larger than ±margin" (the 1 - 2 ALPHA interval lies inside ±margin)."""
    delta, se = np.asarray(delta, dtype=float), np.asarray(se, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        lower = scipy_stats.t.sf((delta + margin) / se, df)
        upper = scipy_stats.t.cdf((delta - margin) / se, df)
        p = np.maximum(lower, upper)
    return np.where(se > 0, p, np.where(np.abs(delta) < margin, 0.0, 1.0))


def power(se: np.ndarray, df: np.ndarray, effect: np.ndarray | float,
          alpha: float | np.ndarray = ALPHA) -> np.ndarray:
    """Probability that the two-sided test at `alpha` finds a true Δ of `effect`, with this
    standard error and these degrees of freedom (noncentral t)."""
    crit = scipy_stats.t.ppf(1 - np.asarray(alpha) / 2, df)
    se = np.asarray(se, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ncp = np.minimum(np.abs(effect) / se, 1e6)  # no spread at all: certain
        found = scipy_stats.nct.sf(crit, df, ncp) + scipy_stats.nct.cdf(-crit, df, ncp)
    return np.where(np.isnan(se), np.nan, found)


# ---- corrections across hypotheses ----------------------------------------------------------
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
