"""Intervals and paired tests (lit_align.evaluation.stats) against values worked out by hand.

Throughout, z is the two-sided 95 % normal quantile 1.959963984540054, so
z² = 3.841458820694124, z²/2 = 1.920729410347062 and z²/4 = 0.960364705173531.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_align.evaluation.stats import (
    Comparison,
    Estimate,
    bootstrap_interval,
    compare,
    mcnemar_exact,
    mean_estimate,
    paired_bootstrap,
    proportion_estimate,
    wilson_interval,
)

Z = 1.959963984540054
Z2 = 3.841458820694124


# --- Wilson ---------------------------------------------------------------------------------------
# Wilson score interval, x successes of n:
#   (x + z²/2 ± z·sqrt(x(n−x)/n + z²/4)) / (n + z²)


def test_wilson_3_of_32_by_hand():
    # x(n−x)/n      = 3·29/32                    = 2.71875
    # + z²/4        = 2.71875 + 0.960364705      = 3.679114705
    # sqrt          = 1.918101850
    # · z           = 1.918101850 · 1.959963985  = 3.759410544
    # x + z²/2      = 3 + 1.920729410            = 4.920729410
    # n + z²        = 32 + 3.841458821           = 35.841458821
    # low           = (4.920729410 − 3.759410544) / 35.841458821 = 1.161318867 / 35.841458821 = 0.032401551
    # high          = (4.920729410 + 3.759410544) / 35.841458821 = 8.680139954 / 35.841458821 = 0.242181547
    low, high = wilson_interval(3, 32)
    assert low == pytest.approx(0.032401551, abs=1e-8)
    assert high == pytest.approx(0.242181547, abs=1e-8)


def test_wilson_0_of_32_by_hand():
    # x = 0: the square root is sqrt(z²/4) = z/2, so centre and half-width are both z²/2:
    # low  = 0 exactly
    # high = z² / (n + z²) = 3.841458821 / 35.841458821 = 0.107179198
    assert wilson_interval(0, 32) == (0.0, pytest.approx(0.107179198, abs=1e-8))


def test_wilson_32_of_32_by_hand():
    # x = n: mirror image of x = 0:
    # low  = (n + z²/2 − z²/2) / (n + z²) = 32 / 35.841458821 = 0.892820802
    # high = 1 exactly (not 1.0000000000000002 from rounding)
    assert wilson_interval(32, 32) == (pytest.approx(0.892820802, abs=1e-8), 1.0)


def test_wilson_3_of_32_at_90_percent_by_hand():
    # z(0.90) = 1.644853627, z² = 2.705543454, z²/2 = 1.352771727, z²/4 = 0.676385864
    # sqrt(2.71875 + 0.676385864) = sqrt(3.395135864) = 1.842589450; · z = 3.030788769
    # low  = (4.352771727 − 3.030788769) / 34.705543454 = 1.321982958 / 34.705543454 = 0.038091373
    # high = (4.352771727 + 3.030788769) / 34.705543454 = 7.383560496 / 34.705543454 = 0.212748769
    low, high = wilson_interval(3, 32, confidence=0.90)
    assert low == pytest.approx(0.038091373, abs=1e-8)
    assert high == pytest.approx(0.212748769, abs=1e-8)


@pytest.mark.parametrize(
    "x, n, low, high",
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I,
    # method 3 (score interval without continuity correction), to the 4 decimals printed there.
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_matches_published_table(x, n, low, high):
    got = wilson_interval(x, n)
    assert got[0] == pytest.approx(low, abs=5e-5)
    assert got[1] == pytest.approx(high, abs=5e-5)


def test_wilson_is_symmetric_and_validates():
    for x in range(0, 33):
        low, high = wilson_interval(x, 32)
        mirror_low, mirror_high = wilson_interval(32 - x, 32)
        assert low == pytest.approx(1 - mirror_high, abs=1e-12) and high == pytest.approx(1 - mirror_low, abs=1e-12)
        assert 0.0 <= low <= x / 32 <= high <= 1.0
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(33, 32)
    with pytest.raises(ValueError, match="n must be positive"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(3, 32, confidence=95)


# --- McNemar --------------------------------------------------------------------------------------


def _table(only_a: int, only_b: int, both: int = 0, neither: int = 0) -> tuple[list[int], list[int]]:
    """Per-problem 0/1 outcomes with the given 2x2 counts."""
    a = [1] * only_a + [0] * only_b + [1] * both + [0] * neither
    b = [0] * only_a + [1] * only_b + [1] * both + [0] * neither
    return a, b


@pytest.mark.parametrize(
    "only_a, only_b, p",
    [
        # m = 8 discordant, smaller count 1: 2 · (C(8,0) + C(8,1)) / 2^8 = 2 · (1 + 8) / 256 = 18/256
        (1, 7, 0.0703125),
        # m = 5, smaller count 0: 2 · C(5,0) / 2^5 = 2/32
        (0, 5, 0.0625),
        # m = 6, smaller count 0: 2 · 1/64
        (6, 0, 0.03125),
        # m = 13, smaller count 3: 2 · (1 + 13 + 78 + 286) / 8192 = 756/8192
        (3, 10, 0.09228515625),
        # m = 4, 2 vs 2: 2 · (1 + 4 + 6) / 16 = 22/16 > 1, capped at 1
        (2, 2, 1.0),
        # no discordant problems: no evidence either way
        (0, 0, 1.0),
    ],
)
def test_mcnemar_exact_by_hand(only_a, only_b, p):
    # concordant problems (both right, both wrong) must not change anything
    a, b = _table(only_a, only_b, both=5, neither=9)
    result = mcnemar_exact(a, b)
    assert result.p_value == pytest.approx(p, abs=1e-12)
    assert (result.only_a, result.only_b) == (only_a, only_b)
    # the test is two-sided: swapping the stages swaps the counts and keeps p
    swapped = mcnemar_exact(b, a)
    assert swapped == (result.p_value, only_b, only_a)


def test_mcnemar_takes_bools_and_tensors_and_rejects_scores():
    a, b = _table(1, 7)
    assert mcnemar_exact(torch.tensor(a).bool(), np.array(b, dtype=bool)).p_value == 0.0703125
    with pytest.raises(ValueError, match="0/1 outcomes"):
        mcnemar_exact([0.5, 1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="same problems"):
        mcnemar_exact([0, 1], [0, 1, 1])


# --- bootstrap ------------------------------------------------------------------------------------


def test_bootstrap_all_equal_values_give_zero_width():
    low, high = bootstrap_interval([0.3] * 40, seed=1)
    assert low == high == pytest.approx(0.3)
    assert bootstrap_interval([1.0]) == (1.0, 1.0)


def test_bootstrap_is_deterministic_under_seed():
    values = np.random.default_rng(7).uniform(0, 1, 64)
    first = bootstrap_interval(values, seed=3)
    assert bootstrap_interval(values, seed=3) == first
    assert bootstrap_interval(torch.tensor(values), seed=3) == first  # a tensor gives the same
    assert bootstrap_interval(values, seed=4) != first
    assert paired_bootstrap(values, values[::-1], seed=3) == paired_bootstrap(values, values[::-1], seed=3)


def test_bootstrap_of_half_zeros_half_ones_by_hand():
    # 200 zeros and 200 ones: the resampled mean is Binomial(400, 1/2) / 400, with standard error
    # sqrt(0.5 · 0.5 / 400) = 0.025, so the 95 % percentile interval is close to
    # 0.5 ± 1.96 · 0.025 = 0.5 ± 0.049 = [0.451, 0.549] (the lattice has steps of 0.0025).
    low, high = bootstrap_interval([0.0, 1.0] * 200, resamples=20_000, seed=0)
    assert low == pytest.approx(0.451, abs=0.004)
    assert high == pytest.approx(0.549, abs=0.004)


def test_bootstrap_coverage_on_a_known_distribution():
    # 300 samples of 64 problems with scores uniform on [0, 1] (true mean 0.5): a 95 % interval
    # should cover 0.5 in about 95 % of them. The percentile bootstrap runs a little short on 64
    # problems (about 94 %); 90 % intervals passed off as 95 % would cover about 88 %.
    rng = np.random.default_rng(2024)
    covered = 0
    for trial in range(300):
        low, high = bootstrap_interval(rng.uniform(0, 1, 64), resamples=2000, seed=trial)
        covered += low <= 0.5 <= high
    assert 0.91 <= covered / 300 <= 0.98


def test_weighted_bootstrap_is_instruction_level_adherence():
    # three prompts with 1, 2 and 3 constraints, meeting 1 of 1, 1 of 2 and 0 of 3:
    # instruction level = (1 + 1 + 0) / (1 + 2 + 3) = 2/6, the share-per-prompt weighted by constraints
    estimate = mean_estimate([1.0, 0.5, 0.0], weights=[1, 2, 3], resamples=2000)
    assert estimate.value == pytest.approx(2 / 6)
    assert 0.0 <= estimate.low <= estimate.value <= estimate.high <= 1.0
    with pytest.raises(ValueError, match="weights"):
        mean_estimate([1.0, 0.5], weights=[1, 2, 3])


def test_weights_travel_with_their_problem_by_hand():
    # two prompts: shares 1 and 0 with weights 3 and 1. A resample of two prompts is
    #   (first, first) -> 1, probability 1/4;  (second, second) -> 0, probability 1/4;
    #   one of each -> (3·1 + 1·0) / (3 + 1) = 3/4, probability 1/2.
    # A 40 % interval runs from the 30 % to the 70 % quantile, both inside the 3/4 block (25 % to 75 %).
    # (Ignoring the weights would put that block at 1/2.)
    assert bootstrap_interval([1.0, 0.0], confidence=0.4, resamples=20_000, weights=[3, 1]) == (0.75, 0.75)
    assert bootstrap_interval([1.0, 0.0], confidence=0.4, resamples=20_000) == (0.5, 0.5)


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        bootstrap_interval([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_interval([0.1, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval([0.1, 0.2], confidence=1.0)


# --- paired bootstrap -----------------------------------------------------------------------------


def test_paired_bootstrap_identical_arrays():
    values = np.random.default_rng(0).uniform(0, 1, 64)
    result = paired_bootstrap(values, values.copy())
    # every resampled difference is 0: P(d* <= 0) = P(d* >= 0) = 1, so p = min(1, 2 · 1) = 1
    assert result == (0.0, 0.0, 0.0, 1.0)


def test_paired_bootstrap_clearly_shifted_pair():
    rng = np.random.default_rng(1)
    before = rng.uniform(0, 0.6, 64)
    after = before + 0.3 + rng.normal(0, 0.05, 64)  # every problem gains about 0.3
    diff, low, high, p = paired_bootstrap(before, after)
    assert diff == pytest.approx(after.mean() - before.mean())
    assert 0.25 < low < diff < high < 0.35
    # no resample has d* <= 0: p = 2 · (1 + 0) / (1 + 10000), the smallest reachable value
    assert p == pytest.approx(2 / 10_001) and p < 0.01


def test_paired_bootstrap_p_value_by_hand():
    # two problems, differences (0, 1): a resampled mean is <= 0 only when both draws pick the 0,
    # probability 1/2 · 1/2 = 1/4, and always >= 0; two-sided p = 2 · 1/4 = 1/2.
    assert paired_bootstrap([0, 0], [0, 1], resamples=20_000).p_value == pytest.approx(0.5, abs=0.02)
    # three problems, differences (0, 0, 1): <= 0 when no draw picks the 1: (2/3)^3 = 8/27;
    # p = 2 · 8/27 = 16/27 = 0.5926
    assert paired_bootstrap([0, 0, 0], [0, 0, 1], resamples=20_000).p_value == pytest.approx(16 / 27, abs=0.02)


def test_paired_bootstrap_removes_between_problem_spread():
    # problem difficulty spans [0, 1] but every problem gains exactly 0.05: separate intervals overlap
    # heavily, the paired one is the single point 0.05.
    before = np.linspace(0, 1, 64)
    after = before + 0.05
    assert mean_estimate(after).low < mean_estimate(before).high
    diff, low, high, p = paired_bootstrap(before, after)
    assert (diff, low, high) == pytest.approx((0.05, 0.05, 0.05))
    assert p < 0.01


def test_paired_bootstrap_is_antisymmetric_and_checks_shapes():
    rng = np.random.default_rng(5)
    a, b = rng.uniform(0, 1, 50), rng.uniform(0, 1, 50)
    forward, backward = paired_bootstrap(a, b, seed=9), paired_bootstrap(b, a, seed=9)
    assert backward.mean_diff == pytest.approx(-forward.mean_diff)
    assert (backward.low, backward.high) == pytest.approx((-forward.high, -forward.low))
    assert backward.p_value == forward.p_value
    with pytest.raises(ValueError, match="same problems"):
        paired_bootstrap([0.1, 0.2], [0.1])


# --- printing -------------------------------------------------------------------------------------


def test_estimate_and_comparison_lines():
    assert str(Estimate(0.184, 0.151, 0.219, 64, "bootstrap")) == "0.184 [0.151, 0.219] (n=64, bootstrap)"
    assert str(proportion_estimate(0, 32)) == "0.000 [0.000, 0.107] (n=32, Wilson)"
    assert str(Comparison(0.12, 0.08, 0.16, 0.001, 64, "paired bootstrap")) == (
        "before → after: +0.120 [0.080, 0.160], paired bootstrap p=0.001"
    )
    assert str(Comparison(-0.02, -0.05, 0.01, 0.00012, 64, "paired bootstrap", label="SFT → RLOO")) == (
        "SFT → RLOO: -0.020 [-0.050, 0.010], paired bootstrap p<0.001"
    )
    assert proportion_estimate(20, 64).clears(proportion_estimate(3, 64))
    assert not proportion_estimate(8, 64).clears(proportion_estimate(3, 64))


def test_compare_picks_mcnemar_for_outcomes_and_bootstrap_for_scores():
    before, after = _table(1, 7, both=10, neither=14)
    line = compare(before, after)
    assert (line.test, line.p_value, line.gained, line.lost, line.n) == ("McNemar exact", 0.0703125, 7, 1, 32)
    assert line.diff == pytest.approx(6 / 32)
    assert str(line).endswith("McNemar exact p=0.070 (7 gained, 1 lost)")
    scores = compare([0.1, 0.2, 0.3, 0.4], [0.2, 0.3, 0.5, 0.4])
    assert scores.test == "paired bootstrap" and scores.gained is None
    assert compare(before, after, test="bootstrap").test == "paired bootstrap"
    with pytest.raises(ValueError, match="0/1 outcomes"):
        compare([0.1, 0.2], [0.3, 0.4], test="mcnemar")


def test_slope_estimate_against_least_squares_and_t_tables():
    import numpy as np

    from lit_align.evaluation.stats import slope_estimate, t_quantile

    # textbook two-sided 95 % t values
    for df, table in ((3, 3.182), (5, 2.571), (12, 2.179), (20, 2.086), (60, 2.000)):
        assert t_quantile(df) == pytest.approx(table, abs=4e-3 if df == 3 else 1e-3), df
    y = np.array([0.20, 0.18, 0.25, 0.22, 0.30, 0.28, 0.33, 0.31])
    x = np.arange(y.size, dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    residuals = y - (intercept + slope * x)
    half = 2.447 * np.sqrt((residuals**2).sum() / (y.size - 2) / ((x - x.mean()) ** 2).sum())  # t(0.975, 6)
    got = slope_estimate(y)
    assert got.value == pytest.approx(slope) and got.n == 8
    assert (got.low, got.high) == pytest.approx((slope - half, slope + half), abs=1e-4)
    with pytest.raises(ValueError, match="at least 5 points"):
        slope_estimate([0.1, 0.2, 0.3])


def test_holm_adjusts_step_down_keeps_order_and_caps_at_one():
    from lit_align.evaluation.stats import holm

    # m = 4: sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # 2 x 0.5 = 1.0, then at least that
    assert holm([0.02]) == [0.02] and holm([]) == []
