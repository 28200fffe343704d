"""Statistics of the noise study: a growth exponent that counts runs that never fit, its
bootstrap interval, and rank correlations with intervals. Pure numpy/scipy; no files.

Iterations-to-fit is right-censored: a run that has not fitted its noisy labels by its last
evaluation only tells that it needs more than ``final_iteration`` steps. Dropping it (what
a mean over the runs that fit does) biases the growth low exactly where it is steepest.
Here the growth model is log y = log c + a log p + sigma * eps, eps ~ N(0, 1), fitted by
maximum likelihood with censoring (a Tobit regression): a fitted run contributes the normal
density of its log y, a censored one the probability that log y exceeds its censoring point.
Without censored runs this is ordinary least squares of log y on log p over the runs.

The interval is a percentile bootstrap: each resample draws, within every noise fraction,
as many runs as it has, with replacement (the resampling unit is a run, stratified by p, so
each resample keeps the design's noise fractions), refits, and the 2.5 and 97.5 percentiles
of the refitted exponents bound it. Deterministic: the resamples come from a seeded
generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000  # bootstrap resamples: the percentiles then move by < 0.01 between seeds
SEED = 0  # of the bootstrap generator: same inputs, same interval
MIN_LOG_SIGMA = math.log(1e-3)  # tied log-iterations (evaluations every 50 steps) would
# otherwise drive sigma to 0 and the likelihood to infinity
MAX_EXPONENT = 20.0  # |a| beyond this is no estimate: the censored runs leave a unbounded
# (e.g. every run at the largest p censored above a fitted one), reported as no fit


@dataclass(frozen=True)
class GrowthFit:
    exponent: float | None  # a
    coefficient: float | None  # c
    sigma: float | None  # residual spread of log iterations
    runs: int  # runs used (p > 0)
    censored: int  # of which never fitted
    ci95: tuple[float, float] | None  # bootstrap percentile interval of a
    band: tuple | None = None  # (p values, lower, upper): pointwise 95% band of c p^a


def _neg_log_likelihood(theta, x, y, censored):
    """Tobit negative log-likelihood and its gradient in (log c, a, log sigma)."""
    from scipy.special import log_ndtr

    log_c, a, log_sigma = theta
    sigma = math.exp(log_sigma)
    r = (y - log_c - a * x) / sigma  # standardised residuals (censored: of the censoring point)
    obs, cen = ~censored, censored
    value = 0.5 * np.sum(r[obs] ** 2) + obs.sum() * (log_sigma + 0.5 * math.log(2 * math.pi))
    tail = log_ndtr(-r[cen])  # log P(log y > censoring point)
    value -= tail.sum()
    # d/dr of -log Phi(-r) is lambda = phi(r) / Phi(-r) (the inverse Mills ratio), in logs.
    lam = np.exp(-0.5 * r[cen] ** 2 - 0.5 * math.log(2 * math.pi) - tail)
    g_mu = -np.concatenate([r[obs], lam]) / sigma  # d value / d mu_i, mu = log c + a x
    xs = np.concatenate([x[obs], x[cen]])
    g_log_sigma = obs.sum() - np.sum(r[obs] ** 2) - np.sum(lam * r[cen])
    return value, np.array([g_mu.sum(), (g_mu * xs).sum(), g_log_sigma])


def censored_power_law(p, iterations, censored) -> tuple[float, float, float] | None:
    """(c, a, sigma) of log y = log c + a log p + sigma eps by censored maximum likelihood,
    over points with p > 0; ``iterations`` holds the censoring point where ``censored``.
    None when fewer than two distinct p remain or every point is censored."""
    from scipy.optimize import minimize

    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(iterations, dtype=np.float64)
    cens = np.asarray(censored, dtype=bool)
    keep = (p > 0) & np.isfinite(y) & (y > 0)
    p, y, cens = p[keep], y[keep], cens[keep]
    if np.unique(p).size < 2 or cens.all():
        return None
    x, ly = np.log(p), np.log(y)
    a0, log_c0 = np.polyfit(x, ly, deg=1)  # least squares: the MLE when nothing is censored
    resid = ly - (log_c0 + a0 * x)
    log_sigma0 = max(math.log(max(float(resid.std()), 1e-300)), MIN_LOG_SIGMA)
    if not cens.any():
        return float(math.exp(log_c0)), float(a0), math.exp(log_sigma0)
    result = minimize(_neg_log_likelihood, np.array([log_c0, a0, log_sigma0]),
                      args=(x, ly, cens), jac=True, method="L-BFGS-B",
                      bounds=[(None, None), (-MAX_EXPONENT, MAX_EXPONENT), (MIN_LOG_SIGMA, None)],
                      options={"ftol": 1e-13, "gtol": 1e-9, "maxiter": 1000})
    log_c, a, log_sigma = result.x
    if abs(a) >= MAX_EXPONENT * (1 - 1e-9):
        return None  # the likelihood keeps growing with a: not identified by these runs
    return float(math.exp(log_c)), float(a), float(math.exp(log_sigma))


def growth_fit(p, iterations, censored, resamples: int = RESAMPLES, seed: int = SEED,
               band_points: int = 50) -> GrowthFit:
    """The censored fit, its stratified percentile bootstrap interval (module doc), and the
    pointwise 95% band of the fitted curve c p^a over ``band_points`` values of p."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(iterations, dtype=np.float64)
    cens = np.asarray(censored, dtype=bool)
    noisy = p > 0
    fit = censored_power_law(p, y, cens)
    if fit is None:
        return GrowthFit(None, None, None, int(noisy.sum()), int(cens[noisy].sum()), None)
    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero(noisy & (p == value)) for value in np.unique(p[noisy])]
    draws = []
    refits: dict[bytes, tuple | None] = {}  # a fit depends on the multiset drawn, not order:
    # small designs (2 seeds x 4 p: 81 multisets) then cost a few fits, not 2,000
    for _ in range(resamples):
        idx = np.concatenate([np.sort(rng.choice(s, size=s.size, replace=True)) for s in strata])
        key = idx.tobytes()
        if key not in refits:
            refits[key] = censored_power_law(p[idx], y[idx], cens[idx])
        if refits[key] is not None:
            draws.append(refits[key][:2])
    ci = band = None
    if draws:
        c, a = np.array(draws).T
        lo, hi = np.percentile(a, [2.5, 97.5])
        ci = (float(lo), float(hi))
        grid = np.linspace(p[noisy].min(), p[noisy].max(), band_points)
        curves = c[:, None] * grid[None, :] ** a[:, None]  # (draws, points)
        lower, upper = np.percentile(curves, [2.5, 97.5], axis=0)
        band = (tuple(grid.tolist()), tuple(lower.tolist()), tuple(upper.tolist()))
    return GrowthFit(fit[1], fit[0], fit[2], int(noisy.sum()), int(cens[noisy].sum()), ci, band)


def verdict_above(ci: tuple[float, float] | None, threshold: float) -> str:
    """'yes' if the whole interval lies above ``threshold``, 'no' if below, else
    'inconclusive' (also when there is no interval)."""
    if ci is None:
        return "inconclusive"
    if ci[0] > threshold:
        return "yes"
    if ci[1] < threshold:
        return "no"
    return "inconclusive"


def spearman(x, y) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN for constant input."""
    from scipy.stats import rankdata

    return _rank_correlation(rankdata(x), rankdata(y))


def _rank_correlation(rx: np.ndarray, ry: np.ndarray) -> float:
    """Pearson's correlation of two rank vectors; NaN when either is constant (all ranks
    tie: average ranks are then exactly equal, so the test is exact)."""
    if (rx == rx[0]).all() or (ry == ry[0]).all():
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman_ci(x, y, resamples: int = RESAMPLES, seed: int = SEED):
    """(rho, (lo, hi)) with a percentile bootstrap over pairs (the resampling unit: a run)."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    rho = spearman(x, y)
    # All resamples drawn at once (the generator yields the same stream as one draw of n at
    # a time) and ranked row-wise: scipy's per-call overhead, 2 x 2,000 calls, was the cost.
    idx = np.random.default_rng(seed).integers(0, x.size, (resamples, x.size))
    ranks_x, ranks_y = rankdata(x[idx], axis=1), rankdata(y[idx], axis=1)
    draws = [value for rx, ry in zip(ranks_x, ranks_y, strict=True)
             if math.isfinite(value := _rank_correlation(rx, ry))]
    if not draws:
        return rho, None
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return rho, (float(lo), float(hi))
