"""Losses against naive loops and against the closed form at the collapsed simplex."""

import math

import numpy as np
import pytest
import torch
from conftest import naive_supcon
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.maths.losses import cross_entropy_loss, supcon_loss
from pipeline.maths.simplex import regular_simplex


def naive_cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    losses = [-logits[i, y[i]] + math.log(np.exp(logits[i]).sum()) for i in range(len(y))]
    return float(np.mean(losses))


def on_sphere(rng, b, h, radius=1.0):
    z = rng.normal(size=(b, h))
    return radius * z / np.linalg.norm(z, axis=1, keepdims=True)


@pytest.mark.parametrize(
    "labels",
    [
        [0, 0, 1, 1, 2, 2],
        [0, 1, 2, 3],  # only singletons: every anchor lacks a positive -> loss 0
        [0, 0, 0, 0, 1],  # one singleton among a class
        [3, 3, 3, 3, 3, 3, 3],  # a single class
    ],
)
@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_supcon_equals_naive_loop(labels, tau):
    rng = np.random.default_rng(0)
    y = np.array(labels)
    z = on_sphere(rng, len(y), 5)
    got = supcon_loss(torch.tensor(z), torch.tensor(y), tau).item()
    assert got == pytest.approx(naive_supcon(z, y, tau), rel=1e-12, abs=1e-12)


def test_supcon_with_repeated_samples_counts_the_copy_as_positive():
    # Batches are drawn with replacement: the same sample twice is its own positive.
    rng = np.random.default_rng(1)
    z = on_sphere(rng, 3, 4)
    z = np.concatenate([z, z[:1]])  # sample 0 drawn twice
    y = np.array([0, 1, 2, 0])
    got = supcon_loss(torch.tensor(z), torch.tensor(y), 0.1).item()
    assert got == pytest.approx(naive_supcon(z, y, 0.1), rel=1e-12)
    assert got > 0


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(2, 24),
    k=st.integers(1, 6),
    h=st.integers(1, 8),
    tau=st.floats(0.05, 5.0),
    seed=st.integers(0, 2**31),
)
def test_supcon_random_batches_equal_naive_loop(b, k, h, tau, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=b)
    z = on_sphere(rng, b, h)
    got = supcon_loss(torch.tensor(z), torch.tensor(y), tau).item()
    assert got == pytest.approx(naive_supcon(z, y, tau), rel=1e-9, abs=1e-12)


def test_supcon_gradient_is_finite_with_singletons():
    z = torch.tensor(on_sphere(np.random.default_rng(2), 4, 3), requires_grad=True)
    supcon_loss(z, torch.tensor([0, 1, 2, 2]), 0.1).backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("k,h,rho,tau", [(3, 2, 1.0, 0.1), (10, 9, 1.0, 0.1), (10, 32, 2.0, 0.5)])
def test_supcon_at_collapsed_simplex_matches_closed_form(k, h, rho, tau):
    # docs/paper.md: an anchor whose class occurs n times contributes
    # log(n - 1 + (b - n) exp(-rho^2 K / (tau (K - 1)))); singletons contribute 0.
    rng = np.random.default_rng(3)
    y = rng.integers(0, k, size=40)
    z = regular_simplex(k, h, rho)[y]
    counts = np.bincount(y, minlength=k)
    b = len(y)
    closed = sum(
        math.log(counts[c] - 1 + (b - counts[c]) * math.exp(-(rho**2) * k / (tau * (k - 1))))
        for c in y
        if counts[c] >= 2
    ) / b
    got = supcon_loss(torch.tensor(z), torch.tensor(y), tau).item()
    assert got == pytest.approx(closed, rel=1e-10)


def test_cross_entropy_equals_naive_formula():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(7, 5)) * 3
    y = rng.integers(0, 5, size=7)
    got = cross_entropy_loss(torch.tensor(logits), torch.tensor(y)).item()
    assert got == pytest.approx(naive_cross_entropy(logits, y), rel=1e-12)


def test_cross_entropy_at_fixed_simplex_optimum_matches_closed_form():
    # docs/paper.md: head rows a simplex of norm r_W, features z = rho w_y / |w_y| give
    # log(1 + (K - 1) exp(-rho r_W K / (K - 1))).
    k, h, rho, r_w = 10, 12, 1.5, 2.0
    w = regular_simplex(k, h, r_w)
    y = np.arange(k).repeat(3)
    z = rho * w[y] / r_w
    got = cross_entropy_loss(torch.tensor(z @ w.T), torch.tensor(y)).item()
    assert got == pytest.approx(math.log(1 + (k - 1) * math.exp(-rho * r_w * k / (k - 1))))
