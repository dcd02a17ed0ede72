"""The report's significance: BLEU from per-sentence statistics against sacreBLEU's public API
and CLI, the single-run paired bootstrap, the tests over seeds against scipy's t-tests, the
sentence main effect, TOST and power. Fast: every simulation is vectorised with numpy. (The
tests' calibration on a realistic null: tests/test_calibration.py.)"""
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


# ---- the tests over seeds --------------------------------------------------------------------
def test_paired_without_sentences_is_the_paired_t_test():
    rng = np.random.default_rng(3)
    base = rng.normal(30, 0.6, 4)
    exp = base + rng.normal(0.8, 0.3, 4)
    res = sig.paired(exp, base)
    expected = scipy_stats.ttest_rel(exp, base)
    assert float(sig.p_value(res["delta"], res["se"], res["df"])) == pytest.approx(
        expected.pvalue, rel=1e-9)
    assert float(res["delta"]) == pytest.approx((exp - base).mean()) and res["df"] == 3
    low, high = sig.interval(res["delta"], res["se"], res["df"])
    assert (low, high) == pytest.approx(tuple(expected.confidence_interval()))


def test_unpaired_without_sentences_is_welchs_t_with_hsus_degrees_of_freedom():
    rng = np.random.default_rng(4)
    a, b = rng.normal(30, 0.6, 3), rng.normal(31, 0.9, 7)
    res = sig.unpaired(b, a)
    welch = scipy_stats.ttest_ind(b, a, equal_var=False)
    t = float(res["delta"] / res["se"])
    assert t == pytest.approx(welch.statistic, rel=1e-9) and res["df"] == 2  # min(3, 7) - 1
    assert float(sig.p_value(res["delta"], res["se"], res["df"])) == pytest.approx(
        2 * scipy_stats.t.sf(abs(t), 2), rel=1e-9)


def test_one_pair_is_too_few():
    res = sig.paired(np.array([33.0]), np.array([30.0]))
    assert np.isnan(res["se"]) and np.isnan(sig.p_value(res["delta"], res["se"], res["df"]))


def test_pseudo_values_average_to_the_corpus_bleu():
    stats = simulate(np.random.default_rng(1), 1, 1, 300)[0, 0, 0]
    pseudo = sig.pseudo_values(stats)
    assert pseudo.shape == (300,)
    # the jackknife's bias correction of a ratio of sums: small, shrinking with N
    assert pseudo.mean() == pytest.approx(float(sig.corpus_bleu(stats)), abs=0.05)


def test_the_sentence_term_sees_a_per_sentence_effect_and_not_the_interaction():
    """Per-sentence differences that agree across seeds (an effect that varies by sentence)
    give a sentence main effect; seed-by-sentence noise alone gives about none (it is
    already in each seed's Δ)."""
    rng = np.random.default_rng(2)
    noise = rng.normal(0, 10, (3, 400))  # interaction: new each seed
    assert sig.sentence_variance_paired(noise) < 0.02 * noise.var() / 400
    effect = rng.normal(0, 10, 400)  # the same each seed
    assert sig.sentence_variance_paired(noise + effect) == pytest.approx(
        effect.var(ddof=1) / 400, rel=0.25)
    a, b = rng.normal(0, 10, (3, 400)) + effect, rng.normal(0, 10, (7, 400))
    assert sig.sentence_variance_unpaired(a, b) == pytest.approx(effect.var(ddof=1) / 400,
                                                                 rel=0.35)
    assert sig.sentence_variance_unpaired(a - effect, b) < 0.05 * 100 / 400


def test_the_sentence_term_widens_the_interval_but_keeps_the_degrees_of_freedom():
    runs = simulate(np.random.default_rng(12), 1, 3, 300, shift=0.1)[0]
    values, pseudo = sig.corpus_bleu(runs), sig.pseudo_values(runs)
    seeds = sig.paired(values[1], values[0])
    both = sig.paired(values[1], values[0], pseudo[1], pseudo[0])
    assert both["se"] >= seeds["se"] and both["df"] == seeds["df"] == 2


def test_tost_and_power():
    # Δ 0.1 ± 0.1 (df 10): the 90% interval [-0.08, 0.28] lies inside ±0.5, not inside ±0.2
    assert sig.tost(0.1, 0.1, 10.0, 0.5) < 0.05 < sig.tost(0.1, 0.1, 10.0, 0.2)
    assert sig.tost(0.0, 0.0, 5.0, 0.5) == 0.0 and sig.tost(0.6, 0.0, 5.0, 0.5) == 1.0
    # power: 5% at no effect, rising with the effect, about 80% at 2.8 standard errors
    assert sig.power(1.0, 1e6, 1e-9) == pytest.approx(0.05, abs=1e-6)
    assert sig.power(1.0, 1e6, 2.8) == pytest.approx(0.80, abs=0.01)
    assert sig.power(1.0, 2.0, 2.8) < sig.power(1.0, 20.0, 2.8) < sig.power(1.0, 20.0, 4.0)
    rng = np.random.default_rng(9)
    d = rng.normal(0.5, 1.0, (20000, 4))
    res = sig.paired(d, np.zeros_like(d))
    found = np.mean(sig.p_value(res["delta"], res["se"], res["df"]) < 0.05)
    assert sig.power(1.0 / 2, 3.0, 0.5) == pytest.approx(found, abs=0.015)


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


def test_single_run_paired_bootstrap_calls_same_config_seeds_significant():
    """Why several seeds: test-set noise only, two seeds of one configuration."""
    runs = simulate(np.random.default_rng(11), 300, 1, 300)
    res = sig.paired_bootstrap(runs[:, 0, 0], runs[:, 1, 0], n_samples=200)
    assert np.mean(res["p_value"] < sig.ALPHA) > 0.15


def test_corrections_match_their_definitions():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, running maximum
    assert sig.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: sorted times 4/1, 4/2, 4/3, 4/4, running minimum from the top
    assert sig.benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert (sig.holm(p) >= p).all() and (sig.benjamini_hochberg(p) <= sig.holm(p)).all()
