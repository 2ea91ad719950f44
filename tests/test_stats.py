"""stats: bootstrap intervals and paired tests on cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys_metric.stats import bootstrap_ci, bootstrap_means, paired_test


def test_ci_covers_the_mean_and_shrinks_with_more_users():
    rng = np.random.default_rng(0)
    small = rng.random(100) < 0.3  # HR-like 0/1 values
    big = rng.random(10_000) < 0.3
    lo_s, hi_s = bootstrap_ci(small)
    lo_b, hi_b = bootstrap_ci(big)
    assert lo_s <= small.mean() <= hi_s
    assert lo_b <= big.mean() <= hi_b
    assert hi_b - lo_b < (hi_s - lo_s) / 5  # width ~ 1/sqrt(n): 10x narrower
    # Bernoulli(0.3), n = 10000: 95% half-width about 1.96 * sqrt(.3 * .7 / 1e4) = 0.009.
    assert (hi_b - lo_b) / 2 == pytest.approx(1.96 * math.sqrt(0.21 / 1e4), rel=0.15)


def test_ci_is_deterministic_for_a_seed_and_alpha_widens_it():
    v = np.random.default_rng(1).random(300)
    assert bootstrap_ci(v, seed=3) == bootstrap_ci(v, seed=3)
    assert bootstrap_ci(v, seed=3) != bootstrap_ci(v, seed=4)
    lo95, hi95 = bootstrap_ci(v, alpha=0.05)
    lo80, hi80 = bootstrap_ci(v, alpha=0.2)
    assert lo95 < lo80 < hi80 < hi95


def test_ci_of_constant_values_is_a_point_and_nan_is_dropped():
    assert bootstrap_ci([0.25] * 50) == (0.25, 0.25)
    assert bootstrap_ci([1.0, np.nan, 1.0]) == (1.0, 1.0)
    lo, hi = bootstrap_ci([np.nan, np.nan])
    assert math.isnan(lo) and math.isnan(hi)


def test_bootstrap_means_are_chunked_identically():
    v = np.arange(10.0)
    m = bootstrap_means(v, n_boot=5000, seed=0)
    assert m.shape == (5000,) and m.min() >= 0 and m.max() <= 9
    assert m.mean() == pytest.approx(4.5, abs=0.05)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci([1.0, 2.0], n_boot=0)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([1.0, 2.0], alpha=1.0)
    with pytest.raises(ValueError, match="one-dimensional"):
        bootstrap_ci(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="same users"):
        paired_test([1.0, 2.0], [1.0])


def test_identical_models_have_p_one_and_zero_difference():
    a = np.random.default_rng(2).random(200)
    res = paired_test(a, a.copy())
    assert res["mean_diff"] == 0.0 and res["ci"] == [0.0, 0.0]
    assert res["p_value"] == 1.0
    assert res["wilcoxon_p"] is None  # no non-zero difference: undefined
    assert res["n"] == 200


def test_clearly_better_model_has_small_p():
    rng = np.random.default_rng(3)
    base = (rng.random(500) < 0.2).astype(float)
    better = np.maximum(base, rng.random(500) < 0.3)  # never worse, often better
    res = paired_test(better, base, n_boot=2000)
    assert res["mean_diff"] == pytest.approx(better.mean() - base.mean())
    assert res["mean_diff"] > 0.15
    assert res["p_value"] == pytest.approx(1 / 2001)  # no resample comes near 0
    assert res["wilcoxon_p"] < 1e-10
    lo, hi = res["ci"]
    assert 0 < lo <= res["mean_diff"] <= hi
    # The direction is a - b.
    rev = paired_test(base, better, n_boot=2000)
    assert rev["mean_diff"] == pytest.approx(-res["mean_diff"])
    assert rev["ci"][1] < 0


def test_noise_only_difference_is_not_significant():
    rng = np.random.default_rng(4)
    a = rng.random(400)
    b = a + rng.normal(0, 0.1, 400) * rng.choice([-1, 1], 400)  # symmetric noise around a
    b -= (b - a).mean()  # exactly zero mean difference
    res = paired_test(a, b)
    assert res["mean_diff"] == pytest.approx(0.0, abs=1e-12)
    assert res["p_value"] > 0.5 and res["wilcoxon_p"] > 0.05
    assert res["ci"][0] < 0 < res["ci"][1]


def test_pairing_is_stronger_than_separate_intervals():
    # Users vary a lot, the model gap is small but consistent: the paired test sees it while
    # the two separate intervals overlap.
    rng = np.random.default_rng(5)
    user = rng.random(300)
    a, b = user + 0.02, user.copy()
    lo_a, hi_a = bootstrap_ci(a)
    lo_b, hi_b = bootstrap_ci(b)
    assert lo_a < hi_b  # overlap
    res = paired_test(a, b)
    assert res["p_value"] < 0.01 and res["ci"][0] > 0


def test_paired_is_deterministic_and_drops_nan_pairs():
    rng = np.random.default_rng(6)
    a, b = rng.random(100), rng.random(100)
    assert paired_test(a, b, seed=1) == paired_test(a, b, seed=1)
    a[0], b[1] = np.nan, np.nan
    res = paired_test(a, b)
    assert res["n"] == 98
    assert res["mean_a"] == pytest.approx(a[2:].mean())
    empty = paired_test([np.nan], [1.0])
    assert empty["n"] == 0 and math.isnan(empty["p_value"])
