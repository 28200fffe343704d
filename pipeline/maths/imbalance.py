"""Class imbalance of the training split: which samples a run trains on (docs/theory.md, "Class
imbalance").

An imbalance setting is a profile and a ratio rho = N_max / N_min >= 1 of the largest to the
smallest class *scale* (the kept counts are floored, so the realised ratio can be a little
larger). Class k keeps floor(n_k s_k) of its n_k samples (at least one), with s_k from
:func:`scales`:

- ``step``: the first K - floor(K/2) classes keep everything, the last floor(K/2) keep 1/rho;
- ``long_tail``: s_k = rho^(-k/(K-1)), exponential decay from 1 (class 0) to 1/rho (class K-1).

Both make the class scales non-increasing in k, so "the minority" is always the last floor(K/2)
classes (:func:`minority_classes`). The kept samples are a seeded random subset of each class
(:func:`imbalanced_subset`); only the training split is subsampled, so test accuracies stay
comparable across rho. Pure numpy: no files, no params.
"""

from __future__ import annotations

import numpy as np

PROFILES = ("step", "long_tail")

# Products n_k s_k that should be integers come out a few ulp off (126 * 10**-0.5 ** 2 ...):
# rounding to this many decimals first keeps floor() from turning 12.0 - 1e-15 into 11.
_COUNT_DECIMALS = 9


def _check_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"imbalance: num_classes must be an integer >= 2, got {num_classes!r}")
    return int(num_classes)


def _check_setting(profile: str, ratio: float) -> float:
    if profile not in PROFILES:
        raise ValueError(f"imbalance: profile must be one of {PROFILES}, got {profile!r}")
    if isinstance(ratio, bool) or not (np.isfinite(ratio) and ratio >= 1):
        raise ValueError(
            f"imbalance: ratio (N_max/N_min) must be a finite number >= 1, got {ratio!r}"
        )
    return float(ratio)


def scales(num_classes: int, profile: str, ratio: float) -> np.ndarray:
    """(K,) float64: the factor each class's own count is multiplied by (1 = keep all).

    ``step``: 1 for classes 0..K-floor(K/2)-1, 1/ratio for the last floor(K/2) (an odd K has
    one more majority class than minority ones). ``long_tail``: ratio^(-k/(K-1)), so the first
    class keeps all and the last keeps 1/ratio, and neighbouring classes differ by the same
    factor (Cao et al. 2019's long-tailed CIFAR). ratio = 1 gives all ones for both: the
    balanced run is the rho = 1 point of the same sweep.
    """
    k = _check_classes(num_classes)
    ratio = _check_setting(profile, ratio)
    if profile == "step":
        out = np.ones(k)
        out[k - k // 2 :] = 1.0 / ratio
        return out
    return ratio ** (-np.arange(k) / (k - 1))


def _check_counts(counts) -> np.ndarray:
    c = np.asarray(counts)
    if c.ndim != 1:
        raise ValueError(f"imbalance: counts must be 1-D (one per class), got shape {c.shape}")
    if not np.issubdtype(c.dtype, np.integer):
        if not (np.isfinite(c).all() and np.array_equal(c, np.round(c))):
            raise ValueError(f"imbalance: class counts must be integers, got {c}")
    if (c < 0).any():
        raise ValueError(f"imbalance: class counts must be >= 0, got {c}")
    return c.astype(np.int64)


def imbalanced_counts(counts, profile: str, ratio: float) -> np.ndarray:
    """(K,) int64: how many samples of each class the imbalanced split keeps.

    n_k' = max(1, floor(round(n_k s_k, 9))) with s_k = :func:`scales`: the rounding absorbs
    float error in n_k s_k (12.000000000000002 and 11.999999999999998 both mean 12); at least
    one sample survives, so no class vanishes from training and every class keeps a simplex
    vertex. A class with no samples stays at 0 (nothing to keep). ratio = 1 returns the
    counts unchanged.
    """
    c = _check_counts(counts)
    s = scales(c.size, profile, ratio)
    if ratio == 1:
        return c
    kept = np.floor(np.round(c * s, _COUNT_DECIMALS)).astype(np.int64)
    return np.where(c > 0, np.maximum(kept, 1), 0)


def largest_ratio(counts, profile: str) -> float:
    """The largest ratio at which every class of ``counts`` keeps at least one sample of its
    own (n_k s_k >= 1), so that the clamp of :func:`imbalanced_counts` never acts: above it
    the smallest class stays at one sample and the realised ratio falls short of the one
    asked for. ``step``: the smallest minority count (n_k / rho >= 1); ``long_tail``: the
    least n_k^((K-1)/k) over k >= 1 (n_k rho^(-k/(K-1)) >= 1). Classes with no samples do
    not count; inf when no class limits it."""
    c = _check_counts(counts)
    _check_setting(profile, 1.0)
    k = c.size
    if profile == "step":
        limits = c[k - k // 2 :].astype(np.float64)
    else:
        index = np.arange(1, k)
        limits = c[1:].astype(np.float64) ** ((k - 1) / index)
    limits = limits[c[k - limits.size :] > 0]
    return float(limits.min()) if limits.size else float("inf")


def minority_classes(num_classes: int) -> np.ndarray:
    """(K,) bool: True for the last floor(K/2) classes, the minority of both profiles.

    Both profiles make the class sizes non-increasing in k, so these are the smaller half for
    either (for step exactly the down-scaled classes). A balanced run is split the same way, so
    each group's curve against rho starts from its own rho = 1 value.
    """
    k = _check_classes(num_classes)
    out = np.zeros(k, dtype=bool)
    out[k - k // 2 :] = True
    return out


def imbalanced_subset(labels: np.ndarray, num_classes: int, profile: str, ratio: float,
                      seed: int) -> np.ndarray:
    """Sorted int64 indices into ``labels`` of the training samples the imbalanced run keeps.

    For each class k = 0..K-1 in turn, a permutation of that class's indices drawn from one
    ``np.random.default_rng(seed)`` and its first :func:`imbalanced_counts` entries kept: a
    uniformly random subset per class, and the same seed always gives the same subset (the
    PCG64 stream does not depend on the platform; numpy may change Generator streams between
    releases, which tests/test_imbalance.py would catch). Sorted, so the kept samples keep the
    split's order. ratio = 1 returns np.arange(N) without touching a random generator: the
    balanced run trains on exactly the original split.
    """
    k = _check_classes(num_classes)
    ratio = _check_setting(profile, ratio)
    y = np.asarray(labels)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.size == 0):
        raise ValueError(
            f"imbalance: labels must be a 1-D integer array, got shape {y.shape} {y.dtype}"
        )
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(
            f"imbalance: labels must lie in [0, {k}), got range [{y.min()}, {y.max()}]"
        )
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"imbalance: seed must be an integer >= 0, got {seed!r}")
    if ratio == 1:
        return np.arange(y.size, dtype=np.int64)
    keep = imbalanced_counts(np.bincount(y.astype(np.int64), minlength=k), profile, ratio)
    rng = np.random.default_rng(int(seed))
    kept = [rng.permutation(np.flatnonzero(y == c))[: keep[c]] for c in range(k)]
    return np.sort(np.concatenate(kept)).astype(np.int64)

