"""The decision rule of a sweep in rounds, and the calibration on a null built from baseline
runs: the sequential procedure's false-positive rate, the tests' A/A calibration, the
report's calibration section. Small simulations with fixed RNG seeds, a few seconds; the
full-size calibration is `nmtlab report --calibrate` (reports/calibration.json)."""
from __future__ import annotations

import numpy as np
import pytest

from nmtlab.report import calibration, markdown, sequential
from nmtlab.report import significance as sig

from .test_significance import simulate

SEQ = sequential.SEQUENTIAL


@pytest.fixture(scope="module")
def model() -> calibration.NullModel:
    """A null model of 7 simulated baseline runs on 300 sentences."""
    runs = simulate(np.random.default_rng(21), 1, 7, 300, seed_sd=0.03)[0, 0]
    losses = np.random.default_rng(22).normal(3.26, 0.019, 7)
    return calibration.NullModel.fit(runs, losses, np.random.default_rng(23))


def outcome(out: dict) -> str:
    return sequential.OUTCOMES[int(out["outcome"])]


# ---- the decision rule -----------------------------------------------------------------------
def test_a_clear_effect_stops_at_the_first_look_with_its_spent_alpha():
    base = np.array([30.0, 30.4, 29.8, 30.1, 30.2, 29.9])
    exp = base + np.array([2.0, 2.01, 2.0, 2.02, 1.99, 2.0])
    out = sequential.decide(SEQ, exp, base, margin=0.5)
    assert outcome(out) == "helps" and out["seeds"] == 2
    assert out["p_value"] < SEQ.alphas[0] and out["alpha"] == SEQ.alphas[0]
    assert out["sequential_p"] == pytest.approx(out["p_value"] * sig.ALPHA / SEQ.alphas[0])
    lower_better = sequential.decide(SEQ, exp, base, higher_is_better=False, margin=0.5)
    assert outcome(lower_better) == "hurts"


def test_an_undecided_arm_waits_for_the_seeds_of_its_next_look():
    base = np.array([30.0, 30.4, 29.8])
    exp = base + np.array([1.0, 0.8, 0.6])  # promising, not yet past 0.005 with 1 df
    out = sequential.decide(SEQ, exp, base, margin=0.5)
    assert outcome(out) == "pending" and out["seeds"] == 2  # look 2 needs 4 seeds
    assert out["p_value"] > SEQ.alphas[0] and out["conditional_power"] > SEQ.futility


def test_futility_and_equivalence_stop_without_a_verdict_on_the_difference():
    base = np.array([30.0, 30.4, 29.8, 30.1])
    worse = sequential.decide(SEQ, base + np.array([-0.6, -0.3, 0, 0]), base, margin=0.5)
    assert outcome(worse) == "futile" and worse["seeds"] == 2
    assert worse["conditional_power"] < SEQ.futility
    same = base + np.array([0.01, -0.01, 0.0, 0.0])
    assert outcome(sequential.decide(SEQ, same, base, margin=0.5)) == "equivalent"
    # an equivalence claim is not stopped for futility: it waits to be shown equivalent
    claim = sequential.decide(SEQ, base[:2] + np.array([-0.6, -0.3]), base[:2], margin=0.5,
                              equivalence_claim=True)
    assert outcome(claim) == "pending" and claim["seeds"] == 2


def test_a_fixed_design_is_one_look_at_alpha_0_05():
    base = np.array([30.0, 30.4, 29.8])
    exp = base + np.array([0.9, 0.7, 1.1])
    out = sequential.decide(sequential.fixed(3), exp, base, margin=0.5)
    p = sig.p_value(*(sig.paired(exp, base)[k] for k in ("delta", "se", "df")))
    assert out["p_value"] == pytest.approx(p) and out["sequential_p"] == pytest.approx(p)
    assert outcome(out) == ("helps" if p < 0.05 else "undecided")
    assert sum(SEQ.alphas) <= sig.ALPHA  # Bonferroni: the looks together spend at most 0.05


# ---- the null model and the simulations -------------------------------------------------------
def test_the_null_model_varies_as_much_as_the_baseline(model):
    c = model.components
    assert c["seed_effect"] + c["drawn"] == pytest.approx(c["seed_variance"], rel=1e-6)
    assert 0 < c["drawn"] < c["interaction"] * 1.2  # draws from 7 runs: about 6/7 of it
    rng = np.random.default_rng(24)
    same_test_set = np.broadcast_to(np.arange(model.sentences), (400, model.sentences))
    bleu, pseudo = model.bleu_runs(rng, same_test_set, 1)
    assert bleu.var() == pytest.approx(c["seed_variance"], rel=0.25)
    assert pseudo.shape == (400, 1, model.sentences)


def test_the_sequential_procedures_false_positive_rate_is_at_most_5_percent(model):
    """The issue's bar: the whole procedure (looks at 2, 4, 6 seeds, spending, futility and
    equivalence stops) calls "helps" or "hurts" on arms with no effect at most 5% of the
    time, and spends fewer seeds than the 6 of a fixed design."""
    rng = np.random.default_rng(25)
    rows = calibration.sequential_runs(model, rng, 2000, "bleu", (0.0, 4.0), 0.5)
    rows += calibration.sequential_runs(model, rng, 2000, "val_loss", (0.0,), 0.01)
    for r in rows:
        if r["effect"] == 0:
            assert r["helps"] + r["hurts"] <= 0.05, r
            assert r["mean_seeds"] < 4, r
            assert sum(r[o] for o in sequential.OUTCOMES) == pytest.approx(1.0)
    found = next(r for r in rows if r["effect"] == 4.0)
    assert found["helps"] > 0.9 and found["hurts"] == 0


def test_a_a_comparisons_calibrate_the_tests(model):
    rows = calibration.null_designs(model, np.random.default_rng(26), 400)
    by = {(r["metric"], r["design"], r["test"]): r for r in rows}
    assert len(by) == len(rows) == 3 * len(calibration.DESIGNS) + 1
    for (metric, _, test), r in by.items():
        if calibration.CHOSEN[metric] == test:
            assert r["false_positive_rate"] <= 0.05 + 3 * max(r["fpr_se"], 0.011), r
            assert r["coverage"] == pytest.approx(1 - r["false_positive_rate"])


def test_calibrate_writes_what_the_report_shows(model, tmp_path):
    runs = simulate(np.random.default_rng(27), 1, 4, 150)[0, 0]
    result = calibration.calibrate(
        {"runs": ["b-s1", "b-s2", "b-s3", "b-s4"], "code": "abc", "stats": runs,
         "val_losses": np.array([3.2, 3.25, 3.22, 3.27])}, {"bleu": 0.5, "val_loss": 0.01},
        replications=80)
    calibration.write(result, tmp_path / "calibration.json")
    back = calibration.read(tmp_path / "calibration.json")
    assert back["baseline"]["runs"] == ["b-s1", "b-s2", "b-s3", "b-s4"]
    text = "\n".join(markdown.calibration_section(back))
    assert "| bleu | 2 seeds, paired | seeds + sentences (used) |" in text
    assert "| bleu | 3 vs 7 runs, unpaired | previous report |" in text
    assert "The whole procedure's false-positive rate" in text
    assert calibration.read(tmp_path / "absent.json") is None
