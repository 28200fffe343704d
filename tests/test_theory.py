"""Closed forms of pipeline.maths.theory against the losses, enumeration and optimisation."""

import itertools
import math
import time

import numpy as np
import pytest
import torch
from conftest import naive_supcon
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.stats import multinomial

from pipeline.maths import theory
from pipeline.maths.free_features import batch_losses
from pipeline.maths.losses import _scaled_gram, cross_entropy_loss, supcon_loss
from pipeline.maths.simplex import regular_simplex


def simplex_batch(counts, k, h, rho, rng):
    """Labels with the given class counts in random order, features on the simplex."""
    labels = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    return regular_simplex(k, h, rho)[labels], labels


# ----------------------------------------------------------------------------- supcon


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(2, 12),
    extra_dims=st.integers(0, 5),
    tau=st.floats(0.05, 5.0),
    rho=st.floats(0.2, 3.0),
    data=st.data(),
)
def test_supcon_at_simplex_equals_the_loss_at_the_simplex(k, extra_dims, tau, rho, data):
    counts = data.draw(st.lists(st.integers(0, 12), min_size=k, max_size=k))
    b = sum(counts)
    assume(b >= 1)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    z, y = simplex_batch(counts, k, k - 1 + extra_dims, rho, rng)
    got = supcon_loss(torch.tensor(z), torch.tensor(y), tau).item()
    closed = theory.supcon_at_simplex(counts, b, k, tau, rho)
    assert closed == pytest.approx(got, rel=1e-6, abs=1e-12)  # the tolerance
    assert closed == pytest.approx(got, rel=1e-10, abs=1e-14)  # what float64 gives


def test_supcon_at_simplex_small_cases_by_hand():
    e = math.exp(-3 / 2 / 0.5)  # K = 3, rho = 1, tau = 0.5
    # counts (2, 1): the pair contributes log(1 + 1 e) twice, the singleton 0
    assert theory.supcon_at_simplex([2, 1, 0], 3, 3, 0.5, 1.0) == pytest.approx(
        2 * math.log(1 + e) / 3, rel=1e-14
    )
    assert theory.supcon_at_simplex([1, 1, 1], 3, 3, 0.5, 1.0) == 0.0  # only singletons
    assert theory.supcon_at_simplex([4], 4, 3, 0.5, 1.0) == pytest.approx(math.log(3))
    batched = theory.supcon_at_simplex([[2, 1, 0], [1, 1, 1]], 3, 3, 0.5, 1.0)
    np.testing.assert_allclose(batched, [2 * math.log(1 + e) / 3, 0.0], rtol=1e-14)


@pytest.mark.parametrize(
    "counts,b,k,message",
    [
        ([2, 2], 5, 3, "sum to b = 5"),
        ([2, -1, 3], 4, 3, ">= 0"),
        ([1, 1, 1, 1], 4, 3, "more than K = 3 classes"),
        ([1.5, 0.5], 2, 3, "integers"),
        ([2, 2], 4, 1, "K >= 2"),
    ],
)
def test_supcon_at_simplex_rejects_bad_input(counts, b, k, message):
    with pytest.raises(ValueError, match=message):
        theory.supcon_at_simplex(counts, b, k, 0.1, 1.0)


def multinomial_expectation(p, b, tau, rho):
    """E over class counts ~ Multinomial(b, p) of the closed form, by enumeration."""
    k = len(p)
    total = 0.0
    for counts in itertools.product(range(b + 1), repeat=k):
        if sum(counts) == b:
            weight = multinomial.pmf(counts, b, p)
            total += weight * theory.supcon_at_simplex(np.array(counts), b, k, tau, rho)
    return total


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(2, 4),
    b=st.integers(1, 9),
    tau=st.floats(0.05, 3.0),
    rho=st.floats(0.3, 2.0),
    raw=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
)
def test_expected_optimum_equals_multinomial_enumeration(k, b, tau, rho, raw):
    p = np.array(raw[:k])
    assume(p.sum() > 0.05)
    p = p / p.sum()
    expected = theory.expected_supcon_optimum(p, b, tau, rho)
    assert expected == pytest.approx(multinomial_expectation(p, b, tau, rho), rel=1e-10, abs=1e-14)


def test_expected_optimum_edge_cases():
    assert theory.expected_supcon_optimum([0.5, 0.5], 1, 0.1, 1.0) == 0.0  # no other sample
    # One class only: every anchor has b - 1 positives and no negative.
    assert theory.expected_supcon_optimum([1.0, 0.0, 0.0], 7, 0.1, 1.0) == pytest.approx(
        math.log(6), rel=1e-14
    )
    # Batch of 2: a positive with probability p_c; then the loss of each anchor is log(1).
    assert theory.expected_supcon_optimum([0.3, 0.7], 2, 0.1, 1.0) == 0.0
    with pytest.raises(ValueError, match="sum to 1"):
        theory.expected_supcon_optimum([0.3, 0.3], 4, 0.1, 1.0)
    with pytest.raises(ValueError, match="K >= 2"):
        theory.expected_supcon_optimum([1.0], 4, 0.1, 1.0)


def test_expected_optimum_is_fast_and_stable_for_large_batches():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(100))
    start = time.perf_counter()
    value = theory.expected_supcon_optimum(p, 256, 0.1, 1.0)
    assert time.perf_counter() - start < 0.5  # ~5 ms: a call per training run is free
    # Against a sampled estimate of the same expectation (law of large numbers, 4 sigma).
    counts = rng.multinomial(256, p, size=4000)
    sampled = theory.supcon_at_simplex(counts, 256, 100, 0.1, 1.0)
    assert abs(value - sampled.mean()) < 4 * sampled.std() / math.sqrt(len(sampled))
    # Huge b: every class is in every batch many times; the loss tends to
    # sum_c p_c log((b-1) p_c + (b-1)(1 - p_c) e). No overflow, no NaN, still fast.
    big = theory.expected_supcon_optimum(p, 10**6, 0.1, 1.0)
    e = theory.negative_weight(100, 0.1, 1.0)
    limit = float(p @ np.log((10**6 - 1) * (p + (1 - p) * e)))
    assert big == pytest.approx(limit, rel=1e-5)


def test_class_frequencies_count_noisy_labels():
    np.testing.assert_allclose(theory.class_frequencies([0, 2, 2, 1], 4), [0.25, 0.25, 0.5, 0])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        theory.class_frequencies([0, 3], 3)


# ----------------------------------------------------------------------------- the theorem


def batched_supcon(z: torch.Tensor, y: torch.Tensor, batches: torch.Tensor, tau: float):
    # Vectorised over batches; tests/test_free_features.py checks it against supcon_loss.
    return batch_losses(z, y, batches, tau)


def all_multisets(n: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every multiset of b indices from range(n) and its probability under b i.i.d. uniform
    draws (the multinomial coefficient / n^b)."""
    rows = list(itertools.combinations_with_replacement(range(n), b))
    weights = [
        math.factorial(b) / math.prod(math.factorial(c) for c in np.bincount(r, minlength=n))
        for r in rows
    ]
    return torch.tensor(rows), torch.tensor(weights, dtype=torch.float64) / n**b


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(2, 4),
    per_class=st.integers(1, 3),
    b=st.integers(2, 4),
    extra_dims=st.integers(0, 2),
    tau=st.floats(0.1, 2.0),
    rho=st.floats(0.5, 1.5),
    scale=st.floats(1e-3, 2.0),
    seed=st.integers(0, 2**31),
)
def test_perturbing_the_collapsed_simplex_never_lowers_the_total_loss(
    k, per_class, b, extra_dims, tau, rho, scale, seed
):
    # Balanced classes: the total over all batches (the sampler's expectation, and the plain
    # sum over multisets) is minimal at the collapsed simplex, where it is the closed form.
    h = k - 1 + extra_dims
    y = torch.arange(k).repeat_interleave(per_class)
    batches, weights = all_multisets(len(y), b)
    simplex = torch.tensor(regular_simplex(k, h, rho))[y]
    at_simplex = batched_supcon(simplex, y, batches, tau)
    counts = np.stack([np.bincount(y[r].numpy(), minlength=k) for r in batches])
    closed = theory.supcon_at_simplex(counts, b, k, tau, rho)
    np.testing.assert_allclose(at_simplex.numpy(), closed, rtol=1e-10, atol=1e-13)
    assert float(weights @ at_simplex) == pytest.approx(
        theory.expected_supcon_optimum(np.full(k, 1 / k), b, tau, rho), rel=1e-10, abs=1e-13
    )
    rng = torch.Generator().manual_seed(seed)
    noise = torch.randn(simplex.shape, generator=rng, dtype=torch.float64)
    perturbed = simplex + scale * rho * noise
    perturbed = rho * perturbed / perturbed.norm(dim=1, keepdim=True)
    moved = batched_supcon(perturbed, y, batches, tau)
    slack = 1e-12 * (1 + float(at_simplex.abs().max()))
    assert float(weights @ moved) >= float(weights @ at_simplex) - slack  # i.i.d. sampler
    assert float(moved.mean()) >= float(at_simplex.mean()) - slack  # uniform over multisets


def view_batches(batches: torch.Tensor, n: int, views: int) -> torch.Tensor:
    """(M, b) sample indices -> (M, views * b) indices of their views into a (views * n)
    feature table whose row u * n + i is view u of sample i (views = 1: unchanged)."""
    return torch.cat([batches + u * n for u in range(views)], dim=1)


def minimise_total(y: torch.Tensor, b: int, tau: float, h: int, seed: int = 0,
                   views: int = 1) -> float:
    """L-BFGS on free features of the expected loss under i.i.d. sampling, all multisets;
    with ``views`` > 1, of the multi-view loss, every view of every sample its own feature."""
    batches, weights = all_multisets(len(y), b)
    batches, y = view_batches(batches, len(y), views), y.repeat(views)
    v = torch.randn(
        len(y), h, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    ).requires_grad_()
    optimizer = torch.optim.LBFGS(
        [v],
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        z = torch.nn.functional.normalize(v, dim=1)
        loss = weights @ batched_supcon(z, y, batches, tau)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(closure().detach())


def test_optimised_total_meets_the_expected_optimum_for_balanced_classes():
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    best = minimise_total(y, 4, 0.5, 2)
    assert best == pytest.approx(theory.expected_supcon_optimum([1 / 3] * 3, 4, 0.5, 1.0), rel=1e-8)


def test_closed_form_is_not_a_bound_for_imbalanced_classes():
    # p = (4/6, 1/6, 1/6): moving the two rare classes off the simplex beats it. The expected
    # value at the simplex is then an upper bound on the optimum, not the optimum.
    y = torch.tensor([0, 0, 0, 0, 1, 2])
    best = minimise_total(y, 4, 0.5, 2)
    at_simplex = theory.expected_supcon_optimum([4 / 6, 1 / 6, 1 / 6], 4, 0.5, 1.0)
    assert best < at_simplex - 1e-3


# ----------------------------------------------------------------------------- multi-view


def multiview_enumeration(p, b, tau, rho, views):
    """E over image class counts n ~ Multinomial(b, p) of the loss at the collapsed simplex of
    the batch of views, whose class counts are views * n (batch size views * b)."""
    k = len(p)
    total = 0.0
    for counts in itertools.product(range(b + 1), repeat=k):
        if sum(counts) == b:
            weight = multinomial.pmf(counts, b, p)
            view_counts = views * np.array(counts)
            total += weight * theory.supcon_at_simplex(view_counts, views * b, k, tau, rho)
    return total


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(2, 4),
    b=st.integers(1, 8),
    views=st.integers(2, 4),
    tau=st.floats(0.05, 3.0),
    rho=st.floats(0.3, 2.0),
    raw=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
)
def test_multiview_expected_optimum_equals_multinomial_enumeration(k, b, views, tau, rho, raw):
    p = np.array(raw[:k])
    assume(p.sum() > 0.05)
    p = p / p.sum()
    expected = theory.expected_supcon_optimum(p, b, tau, rho, views=views)
    assert expected == pytest.approx(multiview_enumeration(p, b, tau, rho, views), rel=1e-10,
                                     abs=1e-14)


def test_multiview_expected_optimum_by_hand():
    e = theory.negative_weight(2, 0.1, 1.0)
    # One image: its views are each other's only positives and there is no negative.
    assert theory.expected_supcon_optimum([0.5, 0.5], 1, 0.1, 1.0, views=2) == 0.0  # log 1
    assert theory.expected_supcon_optimum([0.5, 0.5], 1, 0.1, 1.0, views=3) == pytest.approx(
        math.log(2), rel=1e-14
    )
    # Two images, two views: same class (prob. 1/2): 3 positives, no negative; else one
    # positive (the own other view) and two negatives.
    assert theory.expected_supcon_optimum([0.5, 0.5], 2, 0.1, 1.0, views=2) == pytest.approx(
        0.5 * math.log(3) + 0.5 * math.log(1 + 2 * e), rel=1e-14
    )
    with pytest.raises(ValueError, match="views must be an integer >= 1, got 0"):
        theory.expected_supcon_optimum([0.5, 0.5], 4, 0.1, 1.0, views=0)
    with pytest.raises(ValueError, match="views must be an integer >= 1, got 1.5"):
        theory.expected_supcon_optimum([0.5, 0.5], 4, 0.1, 1.0, views=1.5)


def test_multiview_expected_optimum_agrees_with_the_single_view_one_where_it_must():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(10))
    # views = 1 is the single-view formula itself, to the bit
    assert (theory.expected_supcon_optimum(p, 256, 0.1, 1.0, views=1)
            == theory.expected_supcon_optimum(p, 256, 0.1, 1.0))
    # One class: every view has all 2b - 1 others as positives, as in a single-view batch of 2b.
    one = [1.0, 0.0, 0.0]
    assert theory.expected_supcon_optimum(one, 7, 0.1, 1.0, views=2) == pytest.approx(
        theory.expected_supcon_optimum(one, 14, 0.1, 1.0), rel=1e-14
    )
    # Huge b: 2M + 1 positives and 2(b - 1 - M) negatives against M' ~ Bin(2b - 1, p) and
    # 2b - 1 - M' of a single-view batch of 2b: the same to O(1/b).
    b = 10**6
    two = theory.expected_supcon_optimum(p, b, 0.1, 1.0, views=2)
    assert two == pytest.approx(theory.expected_supcon_optimum(p, 2 * b, 0.1, 1.0), rel=1e-5)
    # Small b: different (a singleton image still has its other view as a positive).
    assert theory.expected_supcon_optimum(p, 8, 0.1, 1.0, views=2) != pytest.approx(
        theory.expected_supcon_optimum(p, 16, 0.1, 1.0), rel=1e-3
    )


def test_multiview_expected_optimum_equals_the_loss_averaged_over_the_sampler():
    """Monte Carlo over the training sampler itself: b i.i.d. indices into an imbalanced label
    vector (torch.randint, as the trainer draws them), two views per image, features of every
    view at its class's simplex vertex, the multi-view loss of each batch."""
    from pipeline.maths.losses import multiview_supcon_loss

    k, b, tau = 10, 32, 0.5
    labels = torch.tensor(np.random.default_rng(1).integers(0, k, size=500))
    p = theory.class_frequencies(labels.numpy(), k)
    simplex = torch.tensor(regular_simplex(k, k + 2, 1.0))
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(3000):
        y = labels[torch.randint(len(labels), (b,), generator=g)]
        losses.append(multiview_supcon_loss(simplex[y].expand(2, b, k + 2), y, tau).item())
    losses = np.array(losses)
    error = 4 * losses.std() / math.sqrt(len(losses))
    assert abs(theory.expected_supcon_optimum(p, b, tau, 1.0, views=2) - losses.mean()) < error
    # ... and not the single-view value of b images, nor of 2b images drawn independently
    assert abs(theory.expected_supcon_optimum(p, b, tau, 1.0) - losses.mean()) > 10 * error
    assert abs(theory.expected_supcon_optimum(p, 2 * b, tau, 1.0) - losses.mean()) > 10 * error


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(2, 4),
    per_class=st.integers(1, 2),
    b=st.integers(1, 3),
    extra_dims=st.integers(0, 2),
    tau=st.floats(0.1, 2.0),
    scale=st.floats(1e-3, 2.0),
    seed=st.integers(0, 2**31),
)
def test_perturbing_the_collapsed_simplex_never_lowers_the_multiview_total(
    k, per_class, b, extra_dims, tau, scale, seed
):
    # Balanced classes, two views per drawn sample, each view its own free feature: the
    # sampler-weighted total over all multisets is minimal at the collapsed simplex.
    h = k - 1 + extra_dims
    y = torch.arange(k).repeat_interleave(per_class)
    n = len(y)
    multisets, weights = all_multisets(n, b)
    batches, y_views = view_batches(multisets, n, 2), y.repeat(2)
    simplex = torch.tensor(regular_simplex(k, h, 1.0))[y_views]  # (2n, h)
    at_simplex = batched_supcon(simplex, y_views, batches, tau)
    assert float(weights @ at_simplex) == pytest.approx(
        theory.expected_supcon_optimum(np.full(k, 1 / k), b, tau, 1.0, views=2),
        rel=1e-10, abs=1e-13,
    )
    noise = torch.randn(simplex.shape, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64)
    moved = torch.nn.functional.normalize(simplex + scale * noise, dim=1)
    slack = 1e-12 * (1 + float(at_simplex.abs().max()))
    assert float(weights @ batched_supcon(moved, y_views, batches, tau)) >= (
        float(weights @ at_simplex) - slack
    )


def test_optimised_multiview_total_meets_its_expected_optimum_for_balanced_classes():
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    best = minimise_total(y, 3, 0.5, 2, views=2)
    assert best == pytest.approx(
        theory.expected_supcon_optimum([1 / 3] * 3, 3, 0.5, 1.0, views=2), rel=1e-8
    )


# ----------------------------------------------------------------------------- ce


def test_ce_fixed_optimum_at_aligned_features():
    k, h, rho, r_w = 10, 12, 1.5, 2.0
    w = regular_simplex(k, h, r_w)
    y = np.arange(k).repeat(2)
    got = cross_entropy_loss(torch.tensor(rho * w[y] / r_w @ w.T), torch.tensor(y)).item()
    assert got == pytest.approx(theory.ce_fixed_optimum(k, r_w, rho), rel=1e-12)
    np.testing.assert_allclose(
        theory.ce_fixed_optimum(k, r_w, np.array([0.0, rho])),
        [math.log(k), theory.ce_fixed_optimum(k, r_w, rho)],
    )


@settings(max_examples=50, deadline=None)
@given(
    k=st.integers(2, 10),
    extra_dims=st.integers(0, 4),
    rho=st.floats(0.1, 4.0),
    r_w=st.floats(0.1, 4.0),
    seed=st.integers(0, 2**31),
)
def test_ce_fixed_head_never_below_its_optimum(k, extra_dims, rho, r_w, seed):
    rng = np.random.default_rng(seed)
    h = k - 1 + extra_dims
    w = regular_simplex(k, h, r_w)
    z = rng.normal(size=(30, h))
    z *= rho * rng.uniform(0, 1, size=(30, 1)) / np.linalg.norm(z, axis=1, keepdims=True)
    y = rng.integers(0, k, size=30)
    per_sample = torch.nn.functional.cross_entropy(
        torch.tensor(z @ w.T), torch.tensor(y), reduction="none"
    ).numpy()
    assert (per_sample >= theory.ce_fixed_optimum(k, r_w, rho) - 1e-12).all()


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(2, 8),
    extra_dims=st.integers(0, 4),
    rho=st.floats(0.1, 3.0),
    r_w=st.floats(0.1, 3.0),
    uniform=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_learned_head_bound_holds_under_its_constraint(k, extra_dims, rho, r_w, uniform, seed):
    # Any head with ||W||_F <= sqrt(K) r_W, any |z| <= rho, any class probabilities: the
    # expected CE (weights p_c) is at least the bound. Heads near the optimum are included.
    rng = np.random.default_rng(seed)
    h = k - 1 + extra_dims
    p = np.full(k, 1 / k) if uniform else rng.dirichlet(np.ones(k))
    near_simplex = regular_simplex(k, h, r_w)
    w = near_simplex + rng.normal(size=(k, h)) * rng.choice([1e-3, 0.3, 3.0])
    w *= math.sqrt(k) * r_w / np.linalg.norm(w) * rng.uniform(0.2, 1.0) ** (1 / 4)
    z = rho * w / np.linalg.norm(w, axis=1, keepdims=True)  # aligned: the hardest case
    z += rng.normal(size=z.shape) * rng.choice([0.0, 0.1, 1.0])
    z *= rho / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), rho)  # into the ball
    per_class = torch.nn.functional.cross_entropy(
        torch.tensor(z @ w.T), torch.arange(k), reduction="none"
    ).numpy()
    assert float(p @ per_class) >= theory.ce_learned_head_bound(p, r_w, rho) - 1e-12


def test_learned_head_bound_is_attained_at_the_simplex_and_needs_the_constraint():
    k, h, rho, r_w = 5, 7, 1.2, 0.8
    w = regular_simplex(k, h, r_w)
    z = rho * w / r_w
    ce = cross_entropy_loss(torch.tensor(z @ w.T), torch.arange(k)).item()
    bound = theory.ce_learned_head_bound(np.full(k, 1 / k), r_w, rho)
    assert ce == pytest.approx(bound, rel=1e-12)
    assert bound == pytest.approx(theory.ce_fixed_optimum(k, r_w, rho), rel=1e-14)
    # Twice the allowed Frobenius norm: the same geometry goes below the bound.
    too_big = cross_entropy_loss(torch.tensor(z @ (2 * w).T), torch.arange(k)).item()
    assert too_big < bound - 1e-3
    # Imbalanced classes: valid but looser (larger ||p||_2, larger margin allowed).
    p = np.array([0.6, 0.1, 0.1, 0.1, 0.1])
    assert theory.ce_learned_head_bound(p, r_w, rho) < bound


@settings(max_examples=50, deadline=None)
@given(
    k=st.integers(2, 8),
    h=st.integers(1, 10),
    b=st.integers(1, 20),
    scale=st.floats(0.01, 10.0),
    seed=st.integers(0, 2**31),
)
def test_ce_bound_at_norms_lies_below_every_batch(k, h, b, scale, seed):
    rng = np.random.default_rng(seed)
    head = torch.tensor(rng.normal(size=(k, h)) * scale)
    z = torch.tensor(rng.normal(size=(b, h)) * rng.uniform(0, 3, size=(b, 1)))
    y = torch.tensor(rng.integers(0, k, size=b))
    bound = theory.ce_bound_at_norms(z, y, head).item()
    assert cross_entropy_loss(z @ head.T, y).item() >= bound - 1e-12


def test_ce_bound_at_norms_is_tight_for_the_fixed_head():
    k, h, r_w = 4, 6, 1.5
    w = torch.tensor(regular_simplex(k, h, r_w))
    y = torch.tensor([0, 1, 1, 3, 2])
    norms = torch.tensor([0.5, 1.0, 2.0, 0.1, 3.0], dtype=torch.float64)
    z = norms[:, None] * w[y] / r_w  # aligned, unequal norms
    bound = theory.ce_bound_at_norms(z, y, w).item()
    assert cross_entropy_loss(z @ w.T, y).item() == pytest.approx(bound, rel=1e-12)
    expected = theory.ce_fixed_optimum(k, r_w, norms.numpy()).mean()
    assert bound == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------- the loss itself


def reference_supcon(z: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """Plain autograd formulation (log-softmax over a != i, masked mean over positives)."""
    b = z.shape[0]
    eye = torch.eye(b, dtype=torch.bool)
    logits = (z @ z.T / tau).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (y[:, None] == y[None, :]) & ~eye
    per_anchor = -log_prob.masked_fill(~positives, 0.0).sum(1) / positives.sum(1).clamp(min=1)
    return per_anchor.sum() / b


def backward_both(got_z: torch.Tensor, ref_z: torch.Tensor, y) -> tuple:
    """supcon_loss of ``got_z`` and the reference of ``ref_z`` at tau = 0.2, each backward with
    an upstream gradient of 2.5 (not 1): the two losses, their gradients in the tensors."""
    got = supcon_loss(got_z, torch.tensor(y), 0.2)
    ref = reference_supcon(ref_z, torch.tensor(y), 0.2)
    (2.5 * got).backward()
    (2.5 * ref).backward()
    return got, ref


@pytest.mark.parametrize(
    "b, h",
    [
        (2, 9),
        (3, 9),
        (17, 9),
        (520, 9),
        (128, 127),
        (127, 128),
        (128, 128),
        (255, 130),
        (300, 128),
        (520, 128),
    ],
)
def test_supcon_gradient_equals_autograd_of_the_definition(b, h):
    # The written-out backward pass against autograd in float64, with singletons, repeated
    # samples, labels not in 0..K-1 and an upstream gradient other than 1. float64 on the CPU
    # takes products.matmul (chunked from b = 255, h = 130 on), never the blocked Gram: that
    # path, float32's, is the next test's.
    rng = np.random.default_rng(b)
    y = rng.integers(0, max(2, b // 4), size=b) * 7 - 3
    y[0] = 10**6  # a singleton class
    z = rng.normal(size=(b, h))
    z[-1] = z[0]  # a repeated sample ...
    y[-1] = y[0]  # ... which is its own positive
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    got_z = torch.tensor(z, requires_grad=True)
    ref_z = torch.tensor(z, requires_grad=True)
    got, ref = backward_both(got_z, ref_z, y)
    assert got.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(got_z.grad, ref_z.grad, rtol=1e-10, atol=1e-13)
    if b <= 17:
        assert got.item() == pytest.approx(naive_supcon(z, y, 0.2), rel=1e-12)


@pytest.mark.parametrize(
    "b, h",
    # one product below h = 128; then 2 blocks (even, then uneven edges), 3, 4, 8 and the cap
    # of 32 (b // 64 blocks, uneven edges)
    [(520, 127), (128, 128), (130, 128), (255, 130), (300, 128), (520, 128), (2100, 128)],
)
def test_supcon_float32_on_the_blocked_gram_equals_the_float64_definition(b, h):
    """float32 on the CPU builds the Gram matrix from row blocks, the lower triangle copied:
    it equals one product to float32 rounding, and the loss and its gradient equal autograd
    of the definition in float64."""
    rng = np.random.default_rng(b + h)
    y = rng.integers(0, max(2, b // 8), size=b)
    z = rng.normal(size=(b, h))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    single = torch.tensor(z, dtype=torch.float32)
    gram = _scaled_gram(single, 5.0)
    torch.testing.assert_close(gram, (single @ single.T) * 5.0, rtol=1e-5, atol=1e-5)
    got_z = single.clone().requires_grad_()
    ref_z = torch.tensor(z, requires_grad=True)
    got, ref = backward_both(got_z, ref_z, y)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(got_z.grad.double(), ref_z.grad, rtol=1e-3, atol=1e-6)


def test_supcon_gradcheck_and_tiny_batches():
    y = torch.tensor([0, 0, 1, 2, 2, 2])
    z = torch.nn.functional.normalize(torch.randn(6, 3, dtype=torch.float64), dim=1)
    z.requires_grad_()
    assert torch.autograd.gradcheck(lambda f: supcon_loss(f, y, 0.3), (z,))
    one = torch.ones(1, 4, requires_grad=True)
    loss = supcon_loss(one, torch.tensor([0]), 0.1)  # no other sample: 0, zero gradient
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(one.grad, torch.zeros(1, 4))


def test_supcon_float32_matches_float64():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(1024, 64))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    y = rng.integers(0, 10, size=1024)
    single = supcon_loss(torch.tensor(z, dtype=torch.float32), torch.tensor(y), 0.1).item()
    double = supcon_loss(torch.tensor(z), torch.tensor(y), 0.1).item()
    assert single == pytest.approx(double, rel=1e-5)


@pytest.mark.parametrize("p", [[0.6, 0.2, 0.2], [0.4, 0.3, 0.2, 0.1]])
def test_learned_head_optimum_for_imbalanced_classes_lies_between_bound_and_simplex(p):
    # Optimise a Frobenius-constrained head and one unit feature per class for the weighted
    # CE: it beats the balanced optimum (so the bound must depend on p) but not the bound.
    k = len(p)
    weights = torch.tensor(p, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(k, k, generator=generator, dtype=torch.float64).requires_grad_()
    v = torch.randn(k, k, generator=generator, dtype=torch.float64).requires_grad_()
    optimizer = torch.optim.LBFGS(
        [u, v],
        max_iter=1000,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def objective():
        head = math.sqrt(k) * u / u.norm()  # ||W||_F = sqrt(K) r_W with r_W = 1
        z = torch.nn.functional.normalize(v, dim=1)
        per_class = torch.nn.functional.cross_entropy(z @ head.T, torch.arange(k), reduction="none")
        return weights @ per_class

    def closure():
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimizer.step(closure)
    best = float(objective().detach())
    assert best < theory.ce_fixed_optimum(k, 1.0, 1.0) - 1e-2
    assert best > theory.ce_learned_head_bound(np.array(p), 1.0, 1.0) + 1e-2


def test_benchmark_reference_formulation_equals_supcon_loss():
    # benchmarks/bench_supcon.py times supcon_loss against this reference; both must agree.
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_supcon.py"
    spec = importlib.util.spec_from_file_location("bench_supcon", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(7)
    for labels in ([0, 0, 1, 2, 2, 2, 5], [0, 1, 2, 3], [4, 4, 4]):
        z = rng.normal(size=(len(labels), 5))
        z[-1] = z[0]  # a repeated sample
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        y = torch.tensor(labels)
        ours, ref = torch.tensor(z, requires_grad=True), torch.tensor(z, requires_grad=True)
        a, b = supcon_loss(ours, y, 0.1), bench.reference_supcon(ref, y, 0.1)
        a.backward()
        b.backward()
        assert a.item() == pytest.approx(b.item(), rel=1e-12, abs=1e-12)
        torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("n", "p"), [(255, 0.1), (255, 0.0123), (1023, 0.5), (9, 1.0), (40, 0.97)])
def test_binomial_pmf_matches_scipy(n, p):
    from scipy.stats import binom

    from pipeline.maths.theory import binomial_pmf

    m = np.arange(0, n + 1)
    expected = binom.pmf(m, n, p)
    np.testing.assert_allclose(binomial_pmf(m, n, p), expected, rtol=1e-10, atol=1e-300)
