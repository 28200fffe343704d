"""Closed forms of the optimum losses (docs/paper.md, "Closed forms"); derived in docs/theory.md.

Notation: K classes (the number of simplex vertices, whether or not a batch holds them all),
b batch size, tau temperature, rho feature norm, r_W head row norm. All inputs are plain
numbers or numpy arrays; values are float64.

- :func:`supcon_at_simplex`: the supcon loss of one batch with given class counts when every
  class sits on one vertex of the rho-sphere regular simplex.
- :func:`expected_supcon_optimum`: its exact expectation under the training sampler (b i.i.d.
  draws with replacement, class probabilities = training label frequencies), by binomial
  sums; with ``views`` = v > 1, of the multi-view loss over the v b views of the b draws
  (every class count multiplied by v). The minimum of the expected loss for balanced
  classes; for imbalanced ones the value at the simplex (an upper bound on the minimum; see
  docs/theory.md).
- :func:`ce_fixed_optimum`: the CE minimum with a fixed regular-simplex head of row norm r_W
  and |z| <= rho, per sample (so for every batch and every sampler).
- :func:`ce_learned_head_bound`: a lower bound on the expected CE with a learned bias-free head
  under the constraint ||W||_F^2 <= K r_W^2 (implied by every row norm <= r_W) and |z| <= rho;
  attained, at a regular simplex, exactly when the class probabilities are uniform.
- :func:`ce_bound_at_norms`: a per-batch lower bound on CE for the *current* head and feature
  norms (no constraint needed): what is left once the norms are given.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# Beyond this many standard deviations (plus a margin for tiny variances) the binomial tail
# is below 1e-300 (Chernoff) and is left out of the sums: large b stays O(K sqrt(b)).
_TAIL_SDS = 40.0
_NEGLIGIBLE_PROBABILITY = 1e-300


def _check_classes(num_classes: int) -> int:
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"theory: the simplex needs an integer K >= 2 classes, got {num_classes}")
    return int(num_classes)


def _check_positive(name: str, value: float) -> float:
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"theory: {name} must be a finite number > 0, got {value}")
    return float(value)


def binomial_pmf(m, n: int, p: float) -> np.ndarray:
    """P(M = m) for M ~ Binomial(n, p), from log-gamma: exact to ~1e-13 relative.

    Not scipy.stats.binom: importing scipy.stats costs 0.7 s of every training job's start-up.
    """
    m = np.asarray(m, dtype=np.float64)
    if p == 1.0:
        return (m == n).astype(np.float64)
    log_choose = math.lgamma(n + 1) - np.array([math.lgamma(k + 1) + math.lgamma(n - k + 1)
                                                for k in m.ravel()]).reshape(m.shape)
    return np.exp(log_choose + m * math.log(p) + (n - m) * math.log1p(-p))


def negative_weight(num_classes: int, tau: float, rho: float) -> float:
    """exp(-rho^2 K / (tau (K-1))): exp(<z_i, z_a>/tau) of a negative a relative to a positive
    at the collapsed simplex, where <z_i, z_p> = rho^2 and <z_i, z_a> = -rho^2/(K-1)."""
    k = _check_classes(num_classes)
    tau, rho = _check_positive("tau", tau), _check_positive("rho", rho)
    return math.exp(-(rho**2) * k / (tau * (k - 1)))


def _log_positives_plus_negatives(positives, negatives, weight: float):
    """log(positives + negatives * weight) for positives >= 1, as log(positives) +
    log1p(...): accurate when the negatives' share is far below the rounding of the sum."""
    positives = np.asarray(positives, dtype=np.float64)
    negatives = np.asarray(negatives, dtype=np.float64)
    return np.log(positives) + np.log1p(negatives * weight / positives)


def supcon_at_simplex(counts, b: int, num_classes: int, tau: float, rho: float):
    """Supcon loss of a batch whose classes are collapsed onto a rho-sphere regular simplex.

    ``counts`` (..., C): how often each class occurs in the batch (C <= K columns, zeros
    allowed; leading axes are independent batches); every row must sum to ``b``. An anchor
    whose class occurs n >= 2 times contributes log(n - 1 + (b - n) e) with
    e = :func:`negative_weight`; an anchor alone in its class contributes 0. Returns
    (1/b) sum_c n_c [n_c >= 2] log(n_c - 1 + (b - n_c) e), shape (...) (a float for one batch).
    """
    k = _check_classes(num_classes)
    counts = np.asarray(counts)
    if counts.ndim == 0 or counts.shape[-1] == 0:
        raise ValueError(f"theory: counts must have a class axis, got shape {counts.shape}")
    if not np.issubdtype(counts.dtype, np.integer):
        if not np.array_equal(counts, np.round(counts)):
            raise ValueError(f"theory: class counts must be integers, got {counts}")
        counts = counts.astype(np.int64)
    if (counts < 0).any():
        raise ValueError(f"theory: class counts must be >= 0, got {counts}")
    if ((counts > 0).sum(axis=-1) > k).any():
        raise ValueError(f"theory: counts hold more than K = {k} classes: {counts}")
    if int(b) != b or b < 1:
        raise ValueError(f"theory: batch size b must be an integer >= 1, got {b}")
    sums = counts.sum(axis=-1)
    if (sums != b).any():
        raise ValueError(f"theory: class counts must sum to b = {b}, got sums {sums}")
    e = negative_weight(k, tau, rho)
    n = counts.astype(np.float64)
    has_positive = counts >= 2
    per_class = np.where(
        has_positive,
        n * _log_positives_plus_negatives(np.maximum(n - 1.0, 1.0), b - n, e),
        0.0,
    )
    value = per_class.sum(axis=-1) / b
    return float(value) if value.ndim == 0 else value


def class_frequencies(labels, num_classes: int) -> np.ndarray:
    """Label frequencies p_c = N_c / N over classes 0..K-1 (the training sampler's class
    probabilities: pass the labels trained on, noisy ones included)."""
    k = _check_classes(num_classes)
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError("theory: no labels to count")
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(
            f"theory: labels must lie in [0, {k}), got range [{labels.min()}, {labels.max()}]"
        )
    return np.bincount(labels.ravel(), minlength=k) / labels.size


def expected_supcon_optimum(class_probs, b: int, tau: float, rho: float,
                            views: int = 1) -> float:
    """E[supcon_at_simplex(v counts, v b)] for counts of b i.i.d. draws with class
    probabilities p, each draw seen as ``views`` = v views (v = 1: the single-view batch).

    By exchangeability the expected batch loss is the expected loss of one anchor (a view):
    its image has class c with probability p_c, and given that, the other b - 1 draws hold
    M ~ Binomial(b-1, p_c) more images of class c. The anchor then has v (M + 1) - 1
    positives (the other views of its own image among them) and v (b - 1 - M) negatives, so
        E = sum_c p_c sum_m P(M = m) [v (m+1) - 1 >= 1] log(v (m+1) - 1 + v (b-1-m) e),
    e = :func:`negative_weight` with K = len(p) (every class owns a vertex, also one with
    p_c = 0). For v = 1 the sum starts at m = 1 (an anchor alone in its class adds 0); for
    v >= 2 every anchor has a positive and it starts at m = 0 (docs/theory.md, section 2).
    Exact up to the binomial tails beyond 40 standard deviations (< 1e-300).
    """
    p = np.asarray(class_probs, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"theory: class_probs must be 1-D, got shape {p.shape}")
    k = _check_classes(p.size)
    if (p < 0).any() or not np.isfinite(p).all() or abs(p.sum() - 1.0) > 1e-9:
        raise ValueError(f"theory: class_probs must be >= 0 and sum to 1, got {p} (sum {p.sum()})")
    if int(b) != b or b < 1:
        raise ValueError(f"theory: batch size b must be an integer >= 1, got {b}")
    if isinstance(views, bool) or int(views) != views or views < 1:
        raise ValueError(f"theory: views must be an integer >= 1, got {views!r}")
    v = int(views)
    e = negative_weight(k, tau, rho)
    trials = int(b) - 1
    first = 1 if v == 1 else 0  # fewest other draws of its class that give an anchor a positive
    if trials < first:
        return 0.0
    total = 0.0
    # Classes share probabilities often (balanced data: all): one pmf per distinct value.
    # A class with p_c < 1e-300 adds less than p_c log(v b) < 1e-297: left out (and scipy's
    # binomial pmf raises an overflow error near p = 1e-308).
    values, multiplicity = np.unique(p[p > _NEGLIGIBLE_PROBABILITY], return_counts=True)
    for pc, mult in zip(values, multiplicity, strict=True):
        mean = trials * pc
        sd = math.sqrt(trials * pc * (1.0 - pc))
        lo = max(first, math.floor(mean - _TAIL_SDS * (sd + 1.0)))
        hi = min(trials, math.ceil(mean + _TAIL_SDS * (sd + 1.0)))
        if lo > hi:
            continue
        m = np.arange(lo, hi + 1, dtype=np.float64)  # other draws of the anchor's class
        pmf = binomial_pmf(m, trials, float(pc))
        # v = 1: positives m, negatives trials - m (integers: exact in float64)
        positives, negatives = v * (m + 1.0) - 1.0, v * (trials - m)
        total += mult * pc * float(pmf @ _log_positives_plus_negatives(positives, negatives, e))
    return float(total)


def ce_fixed_optimum(num_classes: int, r_w: float, rho):
    """min CE = log(1 + (K-1) exp(-rho r_W K/(K-1))) over |z| <= rho, for the fixed regular
    simplex head with row norm r_W; reached at z = rho w_y / r_W. Per sample, so the optimum
    of every batch. ``rho`` may be an array (then the bound at each feature norm)."""
    k = _check_classes(num_classes)
    r_w = _check_positive("r_w", r_w)
    rho = np.asarray(rho, dtype=np.float64)
    if (rho < 0).any() or not np.isfinite(rho).all():
        raise ValueError(f"theory: feature norm rho must be finite and >= 0, got {rho}")
    value = np.log1p((k - 1) * np.exp(-rho * r_w * k / (k - 1)))
    return float(value) if value.ndim == 0 else value


def ce_learned_head_bound(class_probs, r_w: float, rho: float) -> float:
    """Lower bound on the expected CE of a learned bias-free head W (K, h) and features z.

    Constraint: ||W||_F^2 <= K r_W^2 (root-mean-square row norm <= r_W; implied by every row
    norm <= r_W) and |z| <= rho. With p the class probabilities,
        E[CE] >= log(1 + (K-1) exp(-rho r_W K^{3/2} ||p||_2 / (K-1))).
    For uniform p (K^{1/2} ||p||_2 = 1) this is ce_fixed_optimum(K, r_W, rho) and is attained
    exactly when W is a regular simplex of row norm r_W and z = rho w_y / r_W; for other p it
    is valid but not attained. Without a norm constraint the infimum is 0: no bound applies.
    """
    p = np.asarray(class_probs, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"theory: class_probs must be 1-D, got shape {p.shape}")
    k = _check_classes(p.size)
    if (p < 0).any() or abs(p.sum() - 1.0) > 1e-9:
        raise ValueError(f"theory: class_probs must be >= 0 and sum to 1, got {p}")
    r_w, rho = _check_positive("r_w", r_w), _check_positive("rho", rho)
    margin = rho * r_w * k**1.5 * float(np.linalg.norm(p)) / (k - 1)
    return float(np.log1p((k - 1) * np.exp(-margin)))


@torch.no_grad()
def ce_bound_at_norms(
    features: torch.Tensor, labels: torch.Tensor, head: torch.Tensor
) -> torch.Tensor:
    """Per-batch lower bound on the mean CE of ``features`` (b, h) under ``head`` (K, h):
        mean_i log(1 + (K-1) exp(-|z_i| |K w_{y_i} - sum_k w_k| / (K-1))),
    valid for any head and any features (Jensen over the K-1 wrong logits, then
    Cauchy-Schwarz at the sample's own norm). For a regular-simplex head of row norm r_W,
    |K w_y - sum_k w_k| = K r_W and each term is ce_fixed_optimum(K, r_W, |z_i|); the loss
    minus this bound is 0 iff every z_i points along its class's direction K w_y - sum_k w_k.
    Stays on the features' device (no host synchronisation); returns a 0-dim tensor."""
    k = head.shape[0]
    direction = k * head - head.sum(dim=0, keepdim=True)  # (K, h)
    reach = torch.linalg.vector_norm(direction, dim=1)[labels]  # (b,)
    norms = torch.linalg.vector_norm(features, dim=1)  # (b,)
    return torch.log1p((k - 1) * torch.exp(-norms * reach / (k - 1))).mean()
