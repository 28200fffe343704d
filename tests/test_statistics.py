"""pipeline.maths.statistics: the censored growth fit against closed forms and simulations, its
bootstrap interval, the verdicts, and Spearman's rho against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import approx_fprime
from scipy.stats import spearmanr

from pipeline.maths import statistics as st


def test_exact_power_law_without_censoring_is_recovered():
    p = np.repeat([0.1, 0.2, 0.4, 0.8], 3)
    y = 120.0 * p**1.7
    c, a, sigma = st.censored_power_law(p, y, np.zeros(p.size, bool))
    assert a == pytest.approx(1.7, rel=1e-10) and c == pytest.approx(120.0, rel=1e-10)
    assert sigma == pytest.approx(math.exp(st.MIN_LOG_SIGMA))


def test_gradient_of_the_likelihood_matches_finite_differences():
    rng = np.random.default_rng(0)
    x = np.log(rng.uniform(0.1, 0.9, 20))
    y = 5.0 + 1.3 * x + 0.3 * rng.normal(size=20)
    censored = y > 5.2
    theta = np.array([4.9, 1.1, math.log(0.4)])
    _, grad = st._neg_log_likelihood(theta, x, y, censored)

    def value(t):
        return st._neg_log_likelihood(t, x, y, censored)[0]

    np.testing.assert_allclose(grad, approx_fprime(theta, value, 1e-7), rtol=1e-5, atol=1e-6)


def simulate(a=2.0, c=3000.0, sigma=0.25, budget=1500.0, seeds=40, seed=1):
    """Runs whose true iterations follow c p^a with log-normal noise, stopped at ``budget``:
    a run needing more is censored at the budget, as training is."""
    rng = np.random.default_rng(seed)
    p = np.repeat([0.2, 0.4, 0.6, 0.8], seeds)
    true = c * p**a * np.exp(sigma * rng.normal(size=p.size))
    censored = true > budget
    return p, np.where(censored, budget, true), censored


def test_censoring_is_counted_not_dropped():
    p, y, censored = simulate(budget=800.0)
    assert 0.3 < censored.mean() < 0.6  # a real share of runs never fits
    c, a, sigma = st.censored_power_law(p, y, censored)
    assert a == pytest.approx(2.0, abs=0.1) and sigma == pytest.approx(0.25, abs=0.05)
    # Dropping the runs that never fit flattens the curve: three times the error here.
    keep = ~censored
    naive = np.polyfit(np.log(p[keep]), np.log(y[keep]), 1)[0]
    assert abs(naive - 2.0) > 3 * abs(a - 2.0)


def test_bootstrap_interval_covers_the_truth_and_is_deterministic():
    p, y, censored = simulate(seeds=10)
    fit = st.growth_fit(p, y, censored, resamples=300)
    lo, hi = fit.ci95
    assert lo < 2.0 < hi and lo < fit.exponent < hi
    assert fit.censored == int(censored.sum()) and fit.runs == p.size
    assert st.growth_fit(p, y, censored, resamples=300) == fit
    grid, lower, upper = fit.band
    assert len(grid) == 50 and all(lw <= up for lw, up in zip(lower, upper, strict=True))


def test_no_fit_without_two_noise_levels_or_with_everything_censored():
    assert st.censored_power_law([0.0, 0.5, 0.5], [50, 300, 310], [False] * 3) is None
    assert st.censored_power_law([0.2, 0.4], [3000, 3000], [True, True]) is None
    assert st.growth_fit([0.2, 0.4], [3000, 3000], [True, True]).exponent is None


@pytest.mark.parametrize(("ci", "verdict"), [((1.2, 1.9), "yes"), ((0.1, 0.8), "no"),
                                             ((0.7, 1.4), "inconclusive"), (None, "inconclusive")])
def test_verdict_follows_from_the_interval(ci, verdict):
    assert st.verdict_above(ci, 1.0) == verdict


def test_spearman_matches_scipy_with_ties():
    x = np.array([1, 2, 2, 3, 5, 4, 4, 8.0])
    y = np.array([9, 7, 7, 6, 2, 3, 4, 1.0])
    assert st.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, rel=1e-12)
    rho, (lo, hi) = st.spearman_ci(x, y, resamples=500)
    assert lo <= rho <= hi < 0


@pytest.mark.parametrize("case", ["ties", "continuous", "constant y", "three runs"])
def test_spearman_interval_equals_the_naive_loop_of_one_resample_at_a_time(case):
    """The vectorised bootstrap (all resamples drawn and ranked at once) gives the very
    floats of the loop it replaced: each resample drawn alone, ranked and correlated by
    scipy, constant resamples dropped."""
    rng = np.random.default_rng(3)
    n = 3 if case == "three runs" else 12
    x = rng.integers(0, 4, n).astype(float) if case == "ties" else rng.normal(size=n)
    y = np.ones(n) if case == "constant y" else rng.normal(size=n) + x
    draws, loop = [], np.random.default_rng(st.SEED)
    for _ in range(st.RESAMPLES):
        idx = loop.integers(0, n, n)
        if np.unique(x[idx]).size > 1 and np.unique(y[idx]).size > 1:
            draws.append(spearmanr(x[idx], y[idx]).statistic)
    rho, ci = st.spearman_ci(x, y)
    if case == "constant y":
        assert math.isnan(rho) and ci is None and draws == []
        return
    assert rho == pytest.approx(spearmanr(x, y).statistic, rel=1e-12)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    assert ci == pytest.approx((lo, hi), rel=1e-12, abs=1e-15)
