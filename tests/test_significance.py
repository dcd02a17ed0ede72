"""The report's significance: BLEU from per-sentence statistics against sacreBLEU's public API
and CLI, and the pooled test over training seeds on simulated scores (false positives under
the null, power on a known shift). Fast: every simulation is vectorised with numpy."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sacrebleu.metrics import BLEU
from scipy import stats as scipy_stats

from nmtlab.report import significance as sig

from .conftest import synthetic_pairs

SACREBLEU = str(Path(sys.executable).parent / "sacrebleu")


def noisy(lines: list[str], drop: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(w for w in line.split() if rng.random() >= drop) for line in lines]


# ---- BLEU from statistics ------------------------------------------------------------------
def test_bleu_from_statistics_equals_sacrebleu_corpus_score_on_random_subsets():
    refs = [en for _, en in synthetic_pairs(300, seed=7)]
    hyps = noisy(refs, 0.3, 1)
    hyps[:3] = ["", "a", refs[3]]  # empty, one word (no 2-grams), exact
    stats = sig.sentence_stats(hyps, refs)
    assert stats.shape == (300, 6)
    rng = np.random.default_rng(0)
    for size in [1, 1, 2, 3, 5, 20, 100, 300]:
        idx = rng.choice(300, size=size, replace=True)
        expected = BLEU().corpus_score([hyps[i] for i in idx], [[refs[i] for i in idx]]).score
        assert float(sig.corpus_bleu(stats[idx])) == pytest.approx(expected, abs=1e-9)
    # the tokenizer and lowercasing are sacreBLEU's too
    upper = [h.upper() for h in hyps]
    lower = sig.sentence_stats(upper, refs, tokenize="intl", lowercase=True)
    expected = BLEU(tokenize="intl", lowercase=True).corpus_score(upper, [refs]).score
    assert float(sig.corpus_bleu(lower)) == pytest.approx(expected, abs=1e-9)


def cli_paired_bs(tmp_path: Path, refs, base, exp) -> list[dict]:
    files = []
    for name, text in (("ref", refs), ("base", base), ("exp", exp)):
        path = tmp_path / f"{name}.txt"
        path.write_text("".join(t + "\n" for t in text), encoding="utf-8")
        files.append(str(path))
    proc = subprocess.run([SACREBLEU, files[0], "-i", *files[1:], "--paired-bs", "-f", "json"],
                          capture_output=True, text=True, check=True)
    return [entry["BLEU"] for entry in json.loads(proc.stdout)]


@pytest.mark.parametrize("drop_base, drop_exp", [(0.3, 0.1), (0.2, 0.2), (0.15, 0.2)])
def test_paired_bootstrap_agrees_with_sacrebleu_paired_bs(tmp_path, drop_base, drop_exp):
    """Same scores; p within Monte-Carlo noise of the CLI's (our resamples are our own)."""
    refs = [en for _, en in synthetic_pairs(200, seed=7)]
    base, exp = noisy(refs, drop_base, 1), noisy(refs, drop_exp, 2)
    cli_base, cli_exp = cli_paired_bs(tmp_path, refs, base, exp)
    res = sig.paired_bootstrap(sig.sentence_stats(base, refs), sig.sentence_stats(exp, refs))
    assert float(res["base_bleu"]) == pytest.approx(cli_base["score"], abs=1e-9)
    assert float(res["exp_bleu"]) == pytest.approx(cli_exp["score"], abs=1e-9)
    assert float(res["p_value"]) == pytest.approx(cli_exp["p_value"], abs=0.05)
    assert res["delta_low"] <= res["delta"] <= res["delta_high"]
    if drop_base == 0.3:  # a big gain: significant, the interval above 0
        assert res["p_value"] < 0.01 and res["delta_low"] > 0


def test_identical_systems_are_no_significant_difference():
    refs = [en for _, en in synthetic_pairs(50, seed=3)]
    stats = sig.sentence_stats(noisy(refs, 0.2, 0), refs)
    res = sig.paired_bootstrap(stats, stats)
    assert res["delta"] == 0 and res["delta_low"] == res["delta_high"] == 0
    assert res["p_value"] == 1.0  # every resample ties Δ = 0 (sacreBLEU's count gives 0.001)
    assert sig.verdict(float(res["delta"]), float(res["p_value"])) == "no significant difference"


# ---- the pooled test ------------------------------------------------------------------------
def test_welch_without_sentence_variance_is_welchs_t_test():
    rng = np.random.default_rng(3)
    a, b = rng.normal(30, 0.6, 3), rng.normal(31, 0.9, 4)
    res = sig.welch(a, b)
    expected = scipy_stats.ttest_ind(b, a, equal_var=False)
    assert float(res["p_value"]) == pytest.approx(expected.pvalue, rel=1e-9)
    assert float(res["delta"]) == pytest.approx(b.mean() - a.mean())
    # extra (sentence) variance adds to the standard error and raises p
    wider = sig.welch(a, b, extra_var=0.5)
    assert wider["se"] ** 2 == pytest.approx(res["se"] ** 2 + 0.5)
    assert wider["p_value"] > res["p_value"]


def test_one_run_a_side_is_too_few_runs():
    res = sig.welch(np.array([30.0, 31.0]), np.array([33.0]))
    assert np.isnan(res["p_value"])
    assert sig.verdict(float(res["delta"]), float(res["p_value"])) == "too few runs"


def simulate(rng: np.random.Generator, pairs: int, runs: int, sentences: int,
             seed_sd: float = 0.03, shift: float = 0.0) -> np.ndarray:
    """(pairs, 2 arms, runs, sentences, 6) per-sentence STATS of simulated systems. Each pair
    has its own test set (sentence lengths and difficulties shared by both arms); each run a
    training-seed effect on its match probability, each sentence binomial noise. The second
    arm's match probability is shifted by `shift` (logit)."""
    shape = (pairs, 2, runs, sentences)
    ref_len = rng.integers(4, 20, (pairs, 1, 1, sentences))
    difficulty = rng.normal(0, 1, (pairs, 1, 1, sentences))
    run_effect = rng.normal(0, seed_sd, (pairs, 2, runs, 1))
    logit = 0.5 + difficulty + run_effect + np.array([0.0, shift]).reshape(1, 2, 1, 1)
    p1 = 1 / (1 + np.exp(-logit))
    hyp_len = np.clip(ref_len + rng.integers(-2, 3, shape), 1, None)
    orders = np.arange(1, sig.ORDER + 1)
    totals = np.clip(hyp_len[..., None] - orders + 1, 0, None)
    matches = rng.binomial(totals, p1[..., None] ** orders)
    return np.concatenate([hyp_len[..., None], np.broadcast_to(ref_len, shape)[..., None],
                           matches], axis=-1)


@pytest.fixture(scope="module")
def null_runs() -> np.ndarray:
    """600 simulated A/A comparisons, 3 seeds a side, 300 test sentences; the seed spread is
    about 0.7 BLEU, as large as the effects the catalogue tests."""
    return simulate(np.random.default_rng(11), 600, 3, 300)


def test_simulated_seed_spread_is_realistic(null_runs):
    per_run = sig.corpus_bleu(null_runs)
    assert 0.4 < per_run.std(axis=-1, ddof=1).mean() < 1.2
    assert 20 < per_run.mean() < 50


def test_pooled_test_false_positive_rate_under_the_null(null_runs):
    res = sig.pooled_bleu(null_runs[:, 0], null_runs[:, 1], n_samples=200)
    rate = np.mean(res["p_value"] < sig.ALPHA)
    assert rate <= 0.07, rate
    # the intervals cover the true Δ (0) as often
    assert np.mean((res["low"] <= 0) & (res["high"] >= 0)) >= 0.93


def test_single_run_paired_bootstrap_calls_same_config_seeds_significant(null_runs):
    """Why the pooled test exists: test-set noise only, two seeds of one configuration."""
    res = sig.paired_bootstrap(null_runs[:, 0, 0], null_runs[:, 1, 0], n_samples=200)
    assert np.mean(res["p_value"] < sig.ALPHA) > 0.15


def test_pooled_test_finds_a_known_shift():
    runs = simulate(np.random.default_rng(12), 300, 3, 300, shift=0.15)
    res = sig.pooled_bleu(runs[:, 0], runs[:, 1], n_samples=200)
    assert 2.5 < res["delta"].mean() < 5  # BLEU points
    verdicts = [sig.verdict(d, p) for d, p in zip(res["delta"], res["p_value"])]
    assert verdicts.count("helps") / len(verdicts) >= 0.8
    assert "hurts" not in verdicts


def test_verdict_follows_the_metrics_direction():
    assert sig.verdict(-0.1, 0.01, higher_is_better=False) == "helps"
    assert sig.verdict(-0.1, 0.01, higher_is_better=True) == "hurts"
    assert sig.verdict(0.5, 0.2) == "no significant difference"


def test_corrections_match_their_definitions():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, running maximum
    assert sig.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: sorted times 4/1, 4/2, 4/3, 4/4, running minimum from the top
    assert sig.benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert (sig.holm(p) >= p).all() and (sig.benjamini_hochberg(p) <= sig.holm(p)).all()


def test_aa_splits_are_the_ten_distinct_3_vs_3_splits():
    splits = sig.aa_splits(6)
    assert len(splits) == 10
    assert {frozenset([frozenset(a), frozenset(b)]) for a, b in splits}.__len__() == 10
    assert all(set(a).isdisjoint(b) and len(a) == len(b) == 3 for a, b in splits)
