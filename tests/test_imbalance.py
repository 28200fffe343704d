"""pipeline.maths.imbalance and the class-imbalance metrics against hand-worked values and naive
loops; the claims of docs/theory.md, "Class imbalance", against autograd and optimised features."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.stats import multinomial

from pipeline.maths import imbalance, metrics, theory
from pipeline.maths.collapse import centred
from pipeline.maths.losses import supcon_loss
from pipeline.maths.simplex import regular_simplex

# ------------------------------------------------------------------------ scales and counts


def loop_scales(k, profile, ratio):
    """docs/theory.md's definition, one class at a time."""
    out = []
    for c in range(k):
        if profile == "step":
            out.append(1.0 if c < k - k // 2 else 1.0 / ratio)
        else:
            out.append(ratio ** (-c / (k - 1)))
    return out


def loop_counts(counts, profile, ratio):
    s = loop_scales(len(counts), profile, ratio)
    return [0 if n == 0 else max(1, math.floor(round(n * sc, 9)))
            for n, sc in zip(counts, s, strict=True)]


def test_scales_by_hand():
    np.testing.assert_array_equal(imbalance.scales(10, "step", 10), [1] * 5 + [0.1] * 5)
    np.testing.assert_array_equal(imbalance.scales(5, "step", 4), [1, 1, 1, 0.25, 0.25])  # odd K
    np.testing.assert_array_equal(imbalance.scales(2, "step", 3), [1, 1 / 3])
    np.testing.assert_allclose(imbalance.scales(3, "long_tail", 4), [1, 0.5, 0.25], rtol=1e-15)
    np.testing.assert_allclose(imbalance.scales(5, "long_tail", 16), [1, 0.5, 0.25, 0.125, 0.0625],
                               rtol=1e-15)
    for profile in imbalance.PROFILES:
        np.testing.assert_array_equal(imbalance.scales(7, profile, 1), np.ones(7))
        np.testing.assert_array_equal(imbalance.scales(7, profile, 1.0), np.ones(7))


@settings(max_examples=60, deadline=None)
@given(k=st.integers(2, 30), ratio=st.floats(1.0, 1e4), profile=st.sampled_from(["step",
                                                                                  "long_tail"]))
def test_scales_equal_the_loop_and_span_one_to_one_over_ratio(k, ratio, profile):
    s = imbalance.scales(k, profile, ratio)
    np.testing.assert_allclose(s, loop_scales(k, profile, ratio), rtol=1e-14)
    assert s[0] == 1.0 and s[-1] == pytest.approx(1 / ratio, rel=1e-14)
    assert np.all(np.diff(s) <= 0)  # non-increasing: the minority is the tail for both


@pytest.mark.parametrize(
    "args,message",
    [
        ((10, "step", 0.5), "ratio .* >= 1, got 0.5"),
        ((10, "step", float("nan")), "got nan"),
        ((10, "long_tail", float("inf")), "got inf"),
        ((10, "long_tail", True), "got True"),
        ((10, "exponential", 10), "profile must be one of .* got 'exponential'"),
        ((1, "step", 10), "num_classes must be an integer >= 2, got 1"),
        ((2.5, "step", 10), "got 2.5"),
    ],
)
def test_scales_reject_bad_settings(args, message):
    with pytest.raises(ValueError, match=message):
        imbalance.scales(*args)


def test_imbalanced_counts_by_hand():
    step = imbalance.imbalanced_counts([126] * 10, "step", 10)
    assert step.dtype == np.int64
    np.testing.assert_array_equal(step, [126] * 5 + [12] * 5)  # 12.6 floored
    tail = imbalance.imbalanced_counts([126] * 10, "long_tail", 100)
    np.testing.assert_array_equal(tail, loop_counts([126] * 10, "long_tail", 100))
    np.testing.assert_array_equal(tail, [126, 75, 45, 27, 16, 9, 5, 3, 2, 1])
    # 147 * (1/49) is 2.9999999999999996 in float64: a plain floor would keep 2.
    assert 147 * (1 / 49) < 3
    np.testing.assert_array_equal(imbalance.imbalanced_counts([147, 147], "step", 49), [147, 3])
    # At least one sample survives; an empty class stays empty.
    np.testing.assert_array_equal(imbalance.imbalanced_counts([50, 0, 5, 5], "step", 1000),
                                  [50, 0, 1, 1])
    unchanged = imbalance.imbalanced_counts(np.array([5, 3, 0]), "long_tail", 1)
    np.testing.assert_array_equal(unchanged, [5, 3, 0])


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 300), min_size=2, max_size=12),
    ratio=st.one_of(st.floats(1.0, 1e3), st.integers(1, 200)),
    profile=st.sampled_from(["step", "long_tail"]),
)
def test_imbalanced_counts_equal_the_loop(counts, ratio, profile):
    kept = imbalance.imbalanced_counts(counts, profile, ratio)
    np.testing.assert_array_equal(kept, loop_counts(counts, profile, ratio))
    c = np.array(counts)
    assert np.all(kept <= c) and np.all((kept >= 1) == (c >= 1))


@pytest.mark.parametrize(
    "counts,message",
    [([[1, 2], [3, 4]], "1-D"), ([1.5, 2], "integers"), ([3, -1], ">= 0"), ([5], ">= 2, got 1")],
)
def test_imbalanced_counts_reject_bad_counts(counts, message):
    with pytest.raises(ValueError, match=message):
        imbalance.imbalanced_counts(counts, "step", 2)


def test_minority_classes_are_the_down_scaled_tail():
    np.testing.assert_array_equal(imbalance.minority_classes(2), [False, True])
    np.testing.assert_array_equal(imbalance.minority_classes(5), [False] * 3 + [True] * 2)
    for k in range(2, 15):
        minority = imbalance.minority_classes(k)
        assert minority.dtype == bool and minority.sum() == k // 2
        np.testing.assert_array_equal(minority, imbalance.scales(k, "step", 10) < 1)
        tail = imbalance.scales(k, "long_tail", 10)
        assert tail[minority].max() < tail[~minority].min()  # the smaller half there too
    with pytest.raises(ValueError, match="got 1"):
        imbalance.minority_classes(1)


# ----------------------------------------------------------------------------------- subset


def test_imbalanced_subset_golden():
    # Fixed output for fixed input: a change of numpy's PCG64 stream, or of the per-class
    # order of draws, changes which samples a seeded run trains on, and must show up here.
    y = np.arange(12) % 3
    np.testing.assert_array_equal(imbalance.imbalanced_subset(y, 3, "step", 2, 0),
                                  [0, 1, 3, 4, 5, 6, 7, 9, 10, 11])
    np.testing.assert_array_equal(imbalance.imbalanced_subset(y, 3, "long_tail", 4, 7),
                                  [0, 2, 3, 4, 6, 9, 10])


def loop_subset(labels, k, profile, ratio, seed):
    """The definition: one generator, classes in order, a permutation of each class's
    indices, its first n_k' kept."""
    rng = np.random.default_rng(seed)
    keep = loop_counts([int(np.sum(labels == c)) for c in range(k)], profile, ratio)
    kept = []
    for c in range(k):
        own = [i for i in range(len(labels)) if labels[i] == c]
        kept += [int(i) for i in rng.permutation(own)[: keep[c]]]
    return sorted(kept)


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(2, 6),
    data=st.data(),
    ratio=st.floats(1.5, 50.0),
    profile=st.sampled_from(["step", "long_tail"]),
    seed=st.integers(0, 2**32),
)
def test_imbalanced_subset_keeps_the_counts_in_order(k, data, ratio, profile, seed):
    y = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=200)))
    idx = imbalance.imbalanced_subset(y, k, profile, ratio, seed)
    assert idx.dtype == np.int64
    assert np.all(np.diff(idx) > 0)  # sorted, no repeats
    assert idx.min() >= 0 and idx.max() < len(y)
    counts = np.bincount(y, minlength=k)
    np.testing.assert_array_equal(np.bincount(y[idx], minlength=k),
                                  imbalance.imbalanced_counts(counts, profile, ratio))
    assert idx.tolist() == loop_subset(y, k, profile, ratio, seed)
    np.testing.assert_array_equal(imbalance.imbalanced_subset(y, k, profile, ratio, seed), idx)


def test_imbalanced_subset_depends_on_the_seed_and_is_the_split_at_ratio_one(monkeypatch):
    y = np.random.default_rng(3).integers(0, 10, size=1000)
    a = imbalance.imbalanced_subset(y, 10, "step", 10, 0)
    b = imbalance.imbalanced_subset(y, 10, "step", 10, 1)
    assert len(a) == len(b) and not np.array_equal(a, b)
    # Majority classes are kept whole whatever the seed; only the minority draws differ.
    majority = ~imbalance.minority_classes(10)[y]
    np.testing.assert_array_equal(a[majority[a]], np.flatnonzero(majority))

    def no_generator(*args, **kwargs):
        raise AssertionError("ratio 1 must not draw")

    monkeypatch.setattr(np.random, "default_rng", no_generator)
    for profile in imbalance.PROFILES:
        same = imbalance.imbalanced_subset(y, 10, profile, 1, 5)
        assert same.dtype == np.int64
        np.testing.assert_array_equal(same, np.arange(1000))


@pytest.mark.parametrize(
    "labels,seed,message",
    [
        ([0, 3], 0, r"labels must lie in \[0, 3\), got range \[0, 3\]"),
        ([0, -1], 0, r"got range \[-1, 0\]"),
        ([0.0, 1.0], 0, "integer array"),
        ([[0, 1]], 0, "1-D"),
        ([0, 1], -1, "seed must be an integer >= 0, got -1"),
        ([0, 1], 1.5, "got 1.5"),
    ],
)
def test_imbalanced_subset_rejects_bad_input(labels, seed, message):
    with pytest.raises(ValueError, match=message):
        imbalance.imbalanced_subset(np.array(labels), 3, "step", 2, seed)


# ---------------------------------------------------------------------------------- metrics


def test_class_accuracies_by_hand_and_against_a_loop():
    acc = metrics.class_accuracies(np.array([0, 1, 1, 2, 0]), np.array([0, 1, 2, 2, 2]), 4)
    np.testing.assert_array_equal(acc, [1.0, 1.0, 1 / 3, np.nan])  # class 3 has no sample
    rng = np.random.default_rng(0)
    for k in (2, 5, 10):
        target = rng.integers(0, k, size=300)
        pred = np.where(rng.random(300) < 0.6, target, rng.integers(0, k, size=300))
        loop = [np.mean([p == c for p, t in zip(pred, target, strict=True) if t == c])
                for c in range(k)]
        np.testing.assert_allclose(metrics.class_accuracies(pred, target, k), loop, rtol=1e-15)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 2\), got range \[0, 2\]"):
        metrics.class_accuracies(np.array([0, 1]), np.array([0, 2]), 2)
    with pytest.raises(ValueError, match="must be equal 1-D"):
        metrics.class_accuracies(np.array([0, 1]), np.array([0]), 2)


def test_group_cosines_are_the_simplex_cosine_on_a_simplex():
    for k in range(2, 12):
        got = metrics.group_cosines(regular_simplex(k, k + 2), imbalance.minority_classes(k))
        want = -1 / (k - 1)
        assert got["across"] == pytest.approx(want, abs=1e-14)
        if k >= 4:  # both groups have a pair
            assert got["majority"] == pytest.approx(want, abs=1e-14)
            assert got["minority"] == pytest.approx(want, abs=1e-14)
    three = metrics.group_cosines(regular_simplex(3, 2), imbalance.minority_classes(3))
    assert three["majority"] == pytest.approx(-0.5) and math.isnan(three["minority"])


def loop_group_cosines(v, minority):
    def cos(a, b):
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        return a @ b / (na * nb) if na > 0 and nb > 0 else None

    k = len(v)
    groups = {
        "majority": [cos(v[i], v[j]) for i in range(k) for j in range(i + 1, k)
                     if not minority[i] and not minority[j]],
        "minority": [cos(v[i], v[j]) for i in range(k) for j in range(i + 1, k)
                     if minority[i] and minority[j]],
        "across": [cos(v[i], v[j]) for i in range(k) for j in range(k)
                   if not minority[i] and minority[j]],
    }
    return {g: (np.mean([c for c in cs if c is not None]) if any(c is not None for c in cs)
                else math.nan) for g, cs in groups.items()}


def test_group_cosines_by_hand_and_against_a_loop():
    v = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-3.0, 0.0]])
    got = metrics.group_cosines(v, imbalance.minority_classes(4))  # rows 2, 3: minority
    assert got["majority"] == pytest.approx(0.0, abs=1e-15)
    assert got["minority"] == pytest.approx(-1 / math.sqrt(2), rel=1e-14)
    assert got["across"] == pytest.approx((math.sqrt(2) - 1) / 4, rel=1e-14)
    # A zero row: its pairs are skipped, not NaN-poisoning the mean.
    v0 = np.vstack([v[:1], np.zeros((1, 2)), v[1:]])
    minority = np.array([False, False, False, True, True])
    got0 = metrics.group_cosines(v0, minority)
    assert got0 == pytest.approx(loop_group_cosines(v0, minority), rel=1e-14)
    assert got0["majority"] == pytest.approx(0.0, abs=1e-15)
    only_zero_pairs = metrics.group_cosines(np.array([[1.0, 0], [0, 0], [0, 0]]),
                                            np.array([False, True, True]))
    assert math.isnan(only_zero_pairs["minority"]) and math.isnan(only_zero_pairs["across"])
    rng = np.random.default_rng(1)
    for _ in range(20):
        k = int(rng.integers(2, 9))
        w = rng.normal(size=(k, 4))
        mask = rng.random(k) < 0.5
        got = metrics.group_cosines(w, mask)
        want = loop_group_cosines(w, mask)
        for g in ("majority", "minority", "across"):
            assert (math.isnan(got[g]) and math.isnan(want[g])) or got[g] == pytest.approx(
                want[g], rel=1e-12, abs=1e-14)
    with pytest.raises(ValueError, match=r"\(K,\) bool minority mask, got \(4, 2\) and \(3,\)"):
        metrics.group_cosines(v, np.array([True, False, True]))


# ------------------------------------------------------------------ theory: the simplex moves


def labels_of(counts) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))


def gradient_at_simplex(loss_of_directions, k: int, h: int) -> tuple[float, np.ndarray]:
    """Value and gradient at the regular simplex of loss(zeta) w.r.t. v, zeta = v / |v|: the
    gradient on the product of spheres (the radial part projected out), (K, h)."""
    v = torch.tensor(regular_simplex(k, h)).requires_grad_()
    loss = loss_of_directions(torch.nn.functional.normalize(v, dim=1))
    loss.backward()
    return float(loss.detach()), v.grad.numpy()


def tangential(gamma: np.ndarray, zeta: np.ndarray) -> np.ndarray:
    """docs/theory.md: d L / d zeta_c = sum_{d != c} Gamma_cd zeta_d, minus its radial part."""
    g = gamma @ zeta  # (K, K) @ (K, h) -> (K, h); gamma has a zero diagonal
    return g - np.sum(g * zeta, axis=1, keepdims=True) * zeta


def full_batch_gamma(counts, tau: float, rho: float) -> np.ndarray:
    """Gamma_cd = rho^2 e n_c n_d (a_c/D_c + a_d/D_d) / (N tau) at the collapsed simplex."""
    n = np.asarray(counts, dtype=np.float64)
    total, k = n.sum(), n.size
    e = theory.negative_weight(k, tau, rho)
    d = n - 1 + (total - n) * e
    a = np.where(n >= 2, 1.0 / np.where(d > 0, d, 1.0), 0.0)  # a_c / D_c
    gamma = rho**2 * e / (total * tau) * np.outer(n, n) * (a[:, None] + a[None, :])
    np.fill_diagonal(gamma, 0.0)
    return gamma


def is_critical(gamma: np.ndarray, rtol: float = 1e-9) -> bool:
    """The simplex is stationary iff every row of Gamma is constant off the diagonal."""
    off = gamma[~np.eye(len(gamma), dtype=bool)].reshape(len(gamma), -1)  # (K, K-1)
    return bool(np.all(np.ptp(off, axis=1) <= rtol * np.abs(off).max()))


@settings(max_examples=30, deadline=None)
@given(
    counts=st.lists(st.integers(1, 7), min_size=2, max_size=5),
    extra_dims=st.integers(0, 2),
    tau=st.floats(0.1, 2.0),
    rho=st.floats(0.5, 1.5),
)
def test_full_batch_gradient_at_the_simplex_is_the_derived_one(counts, extra_dims, tau, rho):
    k = len(counts)
    y = labels_of(counts)
    value, grad = gradient_at_simplex(lambda z: supcon_loss(rho * z[y], y, tau), k,
                                      k - 1 + extra_dims)
    assert value == pytest.approx(theory.supcon_at_simplex(counts, sum(counts), k, tau, rho),
                                  rel=1e-12)
    gamma = full_batch_gamma(counts, tau, rho)
    zeta = regular_simplex(k, k - 1 + extra_dims)
    np.testing.assert_allclose(grad, tangential(gamma, zeta), atol=1e-13 * (1 + gamma.max()))
    if len(set(counts)) == 1 or k == 2:
        assert is_critical(gamma) and np.abs(grad).max() < 1e-13


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(3, 12),
    big=st.integers(2, 500),
    small_fraction=st.floats(0.0, 0.99),
    tau=st.floats(0.05, 2.0),
)
def test_step_imbalance_is_never_stationary_at_the_simplex(k, big, small_fraction, tau):
    # docs/theory.md: with a majority row c, Gamma_{c, majority} - Gamma_{c, minority} is
    # rho^2 e n_M (n_M - n_m) [(n_m - 2) + e (2N - n_m)] / (N tau D_M D_m) > 0 (n_m >= 2),
    # and n_M/D_M (2 n_M - n_m) > 0 when the minority has no positive (n_m = 1).
    small = max(1, math.floor(small_fraction * big))
    assume(small < big)
    minority = imbalance.minority_classes(k)
    counts = np.where(minority, small, big)
    gamma = full_batch_gamma(counts, tau, 1.0)
    assert not is_critical(gamma, rtol=1e-12)
    n_total = counts.sum()
    e = theory.negative_weight(k, tau, 1.0)
    if small >= 2:
        d_big, d_small = big - 1 + (n_total - big) * e, small - 1 + (n_total - small) * e
        difference = (e * big * (big - small) * ((small - 2) + e * (2 * n_total - small))
                      / (n_total * tau * d_big * d_small))
        assert gamma[0, 1] - gamma[0, k - 1] == pytest.approx(difference, rel=1e-9)
    assert gamma[0, 1] > gamma[0, k - 1]  # majorities push apart harder than from minorities


@pytest.mark.parametrize("profile", imbalance.PROFILES)
def test_imbalanced_splits_are_never_stationary_at_the_simplex(profile):
    # Both profiles on 126 per class, K = 3..10, rho in {1.5, 2, 10, 100}, tau in {0.1, 0.5}:
    # neither the full batch nor the trainer's sampler (b = 256) is stationary at the simplex;
    # the balanced split (ratio 1) always is.
    for k, ratio, tau in itertools.product(range(3, 11), (1.5, 2, 10, 100), (0.1, 0.5)):
        counts = imbalance.imbalanced_counts([126] * k, profile, ratio)
        assert not is_critical(full_batch_gamma(counts, tau, 1.0), rtol=1e-6)
        assert not is_critical(expected_gamma(counts / counts.sum(), 256, tau, 1.0), rtol=1e-6)
        balanced = imbalance.imbalanced_counts([126] * k, profile, 1)
        assert is_critical(full_batch_gamma(balanced, tau, 1.0))
        assert is_critical(expected_gamma(balanced / balanced.sum(), 256, tau, 1.0))


def minimise_full_batch(counts, h: int, tau: float, seed: int):
    """L-BFGS on free unit-norm features of the full-batch supcon loss (one batch, every
    sample once). Returns the minimum, the class-mean cosines and the largest distance of a
    sample from its class mean."""
    y = labels_of(counts)
    v = torch.randn(len(y), h, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64).requires_grad_()
    optimizer = torch.optim.LBFGS([v], max_iter=400, tolerance_grad=1e-12, tolerance_change=1e-15,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = supcon_loss(torch.nn.functional.normalize(v, dim=1), y, tau)
        loss.backward()
        return loss

    optimizer.step(closure)
    z = torch.nn.functional.normalize(v, dim=1).detach().numpy()
    means = np.stack([z[y.numpy() == c].mean(axis=0) for c in range(len(counts))])
    spread = max(np.linalg.norm(z[y.numpy() == c] - means[c], axis=1).max()
                 for c in range(len(counts)))
    return float(closure().detach()), metrics.pairwise_cosines(means), spread


@pytest.mark.parametrize("h", [2, 3])
def test_full_batch_minimum_lies_below_the_simplex_for_imbalanced_classes(h):
    # counts (6, 6, 1), tau = 0.5: every start reaches the same collapsed configuration, with
    # the two large classes nearly antipodal (cos -0.931, not -1/2) and the singleton class
    # at cos -0.185 from both, and a loss 0.0225 below the value at the simplex.
    counts, tau = [6, 6, 1], 0.5
    at_simplex = theory.supcon_at_simplex(counts, 13, 3, tau, 1.0)
    runs = [minimise_full_batch(counts, h, tau, seed) for seed in range(3)]
    for best, cosines, spread in runs:
        assert spread < 1e-5  # still collapsed: each class on one point
        assert best == pytest.approx(runs[0][0], abs=1e-9)
        assert best < at_simplex - 0.02
        np.testing.assert_allclose(cosines, [-0.9313, -0.1853, -0.1853], atol=1e-3)
    assert at_simplex == pytest.approx(1.547832, abs=1e-6)
    assert runs[0][0] == pytest.approx(1.525293, abs=1e-6)


@pytest.mark.parametrize("counts,h", [([4, 4, 4], 2), ([3, 3, 3, 3], 4), ([6, 2], 2), ([6, 1], 2)])
def test_full_batch_minimum_is_the_simplex_for_balanced_classes_and_two_classes(counts, h):
    k, tau = len(counts), 0.5
    at_simplex = theory.supcon_at_simplex(counts, sum(counts), k, tau, 1.0)
    for seed in range(2):
        best, cosines, spread = minimise_full_batch(counts, h, tau, seed)
        assert best == pytest.approx(at_simplex, rel=1e-8)
        np.testing.assert_allclose(cosines, -1 / (k - 1), atol=1e-4)


def test_collapsed_digits_split_falls_below_the_simplex_under_step_imbalance():
    # The digits training split, ~126 per class, step rho = 10: 5 x 126 + 5 x 12, full batch.
    # Optimising only the K class directions (every sample on its class's point) already
    # beats the simplex, so the free-feature minimum does too. tau = 0.5: by 0.047 (0.9 %);
    # tau = 0.1: by 1.8e-5, of the order e = 1.5e-5 by which class angles enter at all.
    # (Two starts agree to 1e-14 in the gap; one is kept here for time.)
    counts = imbalance.imbalanced_counts([126] * 10, "step", 10)
    y = labels_of(counts.tolist())
    minority = imbalance.minority_classes(10)
    found = {}
    for tau in (0.5, 0.1):
        v = torch.tensor(regular_simplex(10, 9))
        v = (v + 0.05 * torch.randn(10, 9, generator=torch.Generator().manual_seed(0),
                                    dtype=torch.float64)).requires_grad_()
        optimizer = torch.optim.LBFGS([v], max_iter=300, tolerance_grad=1e-13,
                                      tolerance_change=1e-16, line_search_fn="strong_wolfe")

        def closure(v=v, optimizer=optimizer, tau=tau):
            optimizer.zero_grad()
            loss = supcon_loss(torch.nn.functional.normalize(v, dim=1)[y], y, tau)
            loss.backward()
            return loss

        optimizer.step(closure)
        zeta = torch.nn.functional.normalize(v, dim=1).detach().numpy()
        gap = float(closure().detach()) - theory.supcon_at_simplex(counts, counts.sum(), 10, tau,
                                                                   1.0)
        found[tau] = (gap, metrics.group_cosines(zeta, minority),  # the directions the loss sees
                      metrics.group_cosines(centred(zeta), minority))
    gap, groups, centred_groups = found[0.5]
    assert gap == pytest.approx(-0.046974, abs=1e-5)
    # Majorities spread apart (-0.235), minorities move towards each other (+0.156).
    assert [groups[g] for g in ("majority", "minority", "across")] == pytest.approx(
        [-0.2352, 0.1565, -0.0621], abs=1e-3)
    # Off the simplex the directions no longer sum to 0, so centring changes the cosines.
    assert centred_groups["majority"] == pytest.approx(-0.119, abs=2e-3)
    gap, groups, _ = found[0.1]
    assert gap == pytest.approx(-1.797e-5, rel=1e-2)
    assert [groups[g] for g in ("majority", "minority", "across")] == pytest.approx(
        [-0.1423, 0.0006, -0.1314], abs=3e-3)


# ---------------------------------------------------------------- theory: the sampler's view


def expected_loss(p, b: int, tau: float, rho: float):
    """E over class counts ~ Multinomial(b, p) of supcon on the collapsed batch: the training
    sampler's expected loss as a function of the class directions, by enumeration."""
    k = len(p)
    rows = [c for c in itertools.product(range(b + 1), repeat=k) if sum(c) == b]
    weights = [float(multinomial.pmf(c, b, p)) for c in rows]
    labels = [labels_of(list(c)) for c in rows]
    return lambda z: sum(w * supcon_loss(rho * z[y], y, tau)
                         for w, y in zip(weights, labels, strict=True))


def expected_gamma(p, b: int, tau: float, rho: float) -> np.ndarray:
    """docs/theory.md: E[Gamma_cd] = rho^2 e / (b tau) (p_d f_c + p_c f_d), with
    f_c = E[n (b - n) [n >= 2] / D(n)] / (1 - p_c), n ~ Binomial(b, p_c),
    D(n) = n - 1 + (b - n) e."""
    p = np.asarray(p, dtype=np.float64)
    e = theory.negative_weight(p.size, tau, rho)
    n = np.arange(b + 1, dtype=np.float64)
    d = n - 1 + (b - n) * e
    term = np.where(n >= 2, n * (b - n) / np.where(d > 0, d, 1.0), 0.0)  # (b+1,)
    f = np.array([theory.binomial_pmf(n, b, pc) @ term for pc in p]) / (1 - p)
    gamma = rho**2 * e / (b * tau) * (np.outer(f, p) + np.outer(p, f))
    np.fill_diagonal(gamma, 0.0)
    return gamma


@settings(max_examples=15, deadline=None)
@given(
    raw=st.lists(st.floats(0.05, 1.0), min_size=3, max_size=3),
    b=st.integers(2, 6),
    tau=st.floats(0.1, 2.0),
    rho=st.floats(0.5, 1.5),
)
def test_expected_gradient_at_the_simplex_is_the_derived_one(raw, b, tau, rho):
    p = np.array(raw) / sum(raw)
    value, grad = gradient_at_simplex(expected_loss(p, b, tau, rho), 3, 2)
    assert value == pytest.approx(theory.expected_supcon_optimum(p, b, tau, rho), rel=1e-10,
                                  abs=1e-14)
    gamma = expected_gamma(p, b, tau, rho)
    np.testing.assert_allclose(grad, tangential(gamma, regular_simplex(3, 2)),
                               atol=1e-12 * (1 + gamma.max()))


def test_expected_loss_under_imbalance_goes_below_its_value_at_the_simplex():
    p, b, tau = np.array([4, 1, 1]) / 6, 4, 0.5
    gamma = expected_gamma(p, b, tau, 1.0)
    assert not is_critical(gamma)
    loss_of = expected_loss(p, b, tau, 1.0)
    at_simplex, grad = gradient_at_simplex(loss_of, 3, 2)
    assert at_simplex == pytest.approx(theory.expected_supcon_optimum(p, b, tau, 1.0), rel=1e-12)
    # A step down the gradient on the spheres already beats the closed form ...
    stepped = torch.nn.functional.normalize(torch.tensor(regular_simplex(3, 2) - 0.5 * grad),
                                            dim=1)
    assert float(loss_of(stepped)) < at_simplex - 1e-4
    # ... and L-BFGS on the three class directions reaches 0.46648, the minimum that free
    # (uncollapsed) features reach in tests/test_theory.py: the rare classes move towards each
    # other (cos 0.080) and away from the frequent one (cos -0.735).
    v = torch.tensor(regular_simplex(3, 2) - 0.5 * grad).requires_grad_()
    optimizer = torch.optim.LBFGS([v], max_iter=100, tolerance_grad=1e-12,
                                  tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = loss_of(torch.nn.functional.normalize(v, dim=1))
        loss.backward()
        return loss

    optimizer.step(closure)
    assert float(closure().detach()) == pytest.approx(0.466481, abs=2e-6)
    zeta = torch.nn.functional.normalize(v, dim=1).detach().numpy()
    np.testing.assert_allclose(metrics.pairwise_cosines(zeta), [-0.7349, -0.7349, 0.0801],
                               atol=1e-3)
    # Balanced classes: E[Gamma] is constant, the simplex is stationary (and the minimum).
    assert is_critical(expected_gamma(np.full(3, 1 / 3), b, tau, 1.0))


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_the_trainers_sampler_on_an_imbalanced_digits_split_is_not_stationary(tau):
    # b = 256 draws from 5 x 126 + 5 x 12 (step, rho = 10): the expected-gradient rows of a
    # majority class differ between majority and minority partners, so the simplex is not a
    # critical point of the expected loss and expected_supcon_optimum is the loss AT the
    # simplex, above the minimum; uniform p (rho = 1) is stationary.
    counts = imbalance.imbalanced_counts([126] * 10, "step", 10)
    gamma = expected_gamma(counts / counts.sum(), 256, tau, 1.0)
    assert gamma[0, 1] > 1.4 * gamma[0, 9]  # 1.47 at tau = 0.1, 6.7 at tau = 0.5
    assert not is_critical(gamma)
    assert is_critical(expected_gamma(np.full(10, 0.1), 256, tau, 1.0))


def test_singleton_minority_classes_merge_under_full_batch_supcon():
    # counts (6, 6, 1, 1): the singletons have no positive, so no loss term of their own pulls
    # them apart; they merge (cos 1) where they least crowd the two large classes, which sit
    # at cos -0.855. A minority collapse of supcon, without any head.
    counts = [6, 6, 1, 1]
    at_simplex = theory.supcon_at_simplex(counts, 14, 4, 0.5, 1.0)
    best, cosines, spread = minimise_full_batch(counts, 3, 0.5, 0)
    assert spread < 1e-5 and best < at_simplex - 0.03
    assert best == pytest.approx(1.430244, abs=1e-6) and at_simplex == pytest.approx(1.469875,
                                                                                      abs=1e-6)
    # pairs (0,1), (0,2), (0,3), (1,2), (1,3), (2,3)
    np.testing.assert_allclose(cosines, [-0.8552, -0.2691, -0.2691, -0.2691, -0.2691, 1.0],
                               atol=1e-3)


@pytest.mark.parametrize("profile", imbalance.PROFILES)
def test_largest_ratio_is_where_the_clamp_starts_to_act(profile):
    """Against a naive scan: at the largest ratio every class keeps n_k s_k >= 1 of its own;
    just above it some class's product falls below one and only the clamp keeps it."""
    rng = np.random.default_rng(3)
    for _ in range(50):
        counts = rng.integers(1, 400, int(rng.integers(2, 12)))
        largest = imbalance.largest_ratio(counts, profile)

        def unclamped(ratio, counts=counts):
            kept = np.round(counts * imbalance.scales(counts.size, profile, ratio), 9)
            return bool(np.all(kept >= 1))

        assert unclamped(largest) and not unclamped(largest * (1 + 1e-6))
        kept = imbalance.imbalanced_counts(counts, profile, largest)
        assert kept.min() >= 1


def test_largest_step_ratio_is_the_smallest_minority_class():
    counts = np.array([124, 127, 124, 128, 127, 127, 127, 125, 122, 126])
    assert imbalance.largest_ratio(counts, "step") == 122.0  # the last five: 127 ... 122
    assert imbalance.largest_ratio(np.array([5, 0, 3]), "step") == 3.0
    assert imbalance.largest_ratio(np.array([5, 3, 0]), "step") == float("inf")  # empty: no limit
