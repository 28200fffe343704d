"""pipeline.maths.optim against torch.optim (SGD, Adam): the same parameters, bit for bit;
L-BFGS against the BFGS matrix built naively, the Wolfe conditions and torch's minima."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.maths import products
from pipeline.maths.optim import LBFGS, SGD, Adam, LineSearchError


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.ReLU(), torch.nn.Linear(5, 3)
    )


def _train_both(ours, ours_opt, ref, ref_opt, rates: list[float], seed: int) -> None:
    """The same steps on both models, with a new lr every step (as training sets it), then
    the parameters must be equal bit for bit."""
    gen = torch.Generator().manual_seed(seed)
    for rate in rates:
        x = torch.randn(16, 6, generator=gen)
        ours_opt.lr = rate
        for group in ref_opt.param_groups:
            group["lr"] = rate
        for net, opt in ((ours, ours_opt), (ref, ref_opt)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.9, 5e-4), (0.0, 0.0), (0.5, 0.0)])
def test_matches_torch_sgd_bit_for_bit(momentum, weight_decay):
    ours, ref = _model(0), _model(0)
    ours_opt = SGD(ours.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=momentum,
                              weight_decay=weight_decay)
    _train_both(ours, ours_opt, ref, ref_opt, [0.1 * ((7 - i) / 7) ** 5 for i in range(7)], 1)


def test_state_round_trip_continues_identically():
    a, b = _model(2), _model(2)
    opt_a = SGD(a.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(3))
    for _ in range(3):
        opt_a.zero_grad()
        a(x).sum().backward()
        opt_a.step()
    b.load_state_dict(a.state_dict())
    opt_b = SGD(b.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    opt_b.load_state_dict(opt_a.state_dict())
    for net, opt in ((a, opt_a), (b, opt_b)):
        opt.zero_grad()
        net(x).sum().backward()
        opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_load_state_of_another_model_is_refused():
    opt = SGD(_model(0).parameters(), lr=0.1, momentum=0.9, weight_decay=0.0)
    with pytest.raises(ValueError, match="holds 1 momentum buffers, the model has 6"):
        opt.load_state_dict({"momentum_buffer": [None]})


@pytest.mark.parametrize("lr", [0.05, 1e-3])
def test_adam_matches_torch_adam_bit_for_bit(lr):
    ours, ref = _model(4), _model(4)
    ours_opt = Adam(ours.parameters(), lr=lr)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=lr)
    cosine = [lr * 0.5 * (1 + math.cos(math.pi * i / 9)) for i in range(9)]
    _train_both(ours, ours_opt, ref, ref_opt, cosine, 5)
    assert not torch.equal(ours[0].weight, _model(4)[0].weight)  # it moved


def _rosenbrock(v: torch.Tensor) -> torch.Tensor:
    """sum_i 100 (v_{i+1} - v_i^2)^2 + (1 - v_i)^2: minimum 0 at v = 1, a curved valley."""
    x = v.flatten()
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def _start(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=gen, dtype=torch.float64) * 0.5 - 1).requires_grad_()


def test_lbfgs_direction_is_minus_the_naive_bfgs_matrix_times_the_gradient():
    """Algorithm 7.4's two loops against H = V' H V + rho s s' (V = I - rho y s'), applied pair
    by pair from H0 = h_diag I, as a dense matrix."""
    v = _start(6, 0)
    opt = LBFGS(v, lambda: _rosenbrock(v), history=4)
    for _ in range(7):  # more steps than history: the oldest pairs have been dropped
        opt.step()
    assert len(opt.memory) == 4
    eye = torch.eye(6, dtype=torch.float64)
    h = opt.h_diag * eye
    for s, y, rho in opt.memory:
        assert rho == pytest.approx(1 / float(y @ s), rel=1e-15)
        left = eye - rho * torch.outer(s, y)
        h = left @ h @ left.T + rho * torch.outer(s, s)
    torch.testing.assert_close(opt.direction(), -h @ opt.grad, rtol=1e-10, atol=1e-12)
    s, y, _ = opt.memory[-1]
    assert opt.h_diag == pytest.approx(float(s @ y) / float(y @ y), rel=1e-15)  # eq. 7.20


def test_every_lbfgs_step_meets_the_strong_wolfe_conditions():
    v = _start(8, 1)
    opt = LBFGS(v, lambda: _rosenbrock(v), c1=1e-4, c2=0.9)
    start = opt.loss
    for _ in range(40):
        x, f, g = v.detach().clone(), opt.loss, opt.grad
        d = opt.direction()
        slope = float(g @ d)
        opt.step()
        step = (v.detach() - x).flatten()
        t = float(step @ d) / float(d @ d)  # the step length taken along d
        torch.testing.assert_close(step, t * d, rtol=1e-12, atol=1e-14)
        assert opt.loss <= f + 1e-4 * t * slope  # sufficient decrease
        assert abs(float(opt.grad @ d)) <= 0.9 * abs(slope)  # curvature
        assert opt.loss == pytest.approx(float(_rosenbrock(v.detach())), rel=1e-15)  # at v
    assert opt.loss < 1e-3 * start and not opt.stalled


@pytest.mark.parametrize(("n", "seed"), [(4, 3), (6, 0), (8, 1), (20, 5)])
def test_lbfgs_reaches_rosenbrock_minimum(n, seed):
    """The curved valley in up to 20 dimensions, from random starts: the minimum to 1e-6 in
    every coordinate within 120 steps. (``torch.optim.LBFGS`` called with ``max_iter=1`` per
    step, as this pipeline once did, gets ``max_eval = 1``: no line search at all, and it
    stalls above 1 on all four.)"""
    v = _start(n, seed)
    opt = LBFGS(v, lambda: _rosenbrock(v))
    for _ in range(120):
        opt.step()
    torch.testing.assert_close(v.detach(), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-6)


def test_lbfgs_minimises_a_quadratic_superlinearly_then_stops():
    """f = x'Ax/2 - b'x in 5 dimensions: A^-1 b to 1e-9 within 12 steps (unit quasi-Newton
    steps, accepted by the loose curvature test, converge superlinearly); at rounding level
    the search finds nothing lower, and later steps cost no evaluation."""
    gen = torch.Generator().manual_seed(2)
    m = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    a, b = m @ m.T + 5 * torch.eye(5, dtype=torch.float64), torch.randn(5, generator=gen,
                                                                          dtype=torch.float64)
    x = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    opt = LBFGS(x, lambda: 0.5 * x @ a @ x - b @ x)
    for _ in range(12):
        opt.step()
    torch.testing.assert_close(x.detach(), torch.linalg.solve(a, b), rtol=0, atol=1e-9)
    for _ in range(3):
        opt.step()
    assert opt.stalled
    evaluations, at = opt.evaluations, x.detach().clone()
    opt.step()
    assert opt.evaluations == evaluations and torch.equal(x.detach(), at)


def test_lbfgs_reaches_torch_lbfgs_minimum():
    """Same problem, same memory and line-search constants: both end at Rosenbrock's minimum
    (and at the same point, to that accuracy)."""
    ours, ref = _start(4, 3), _start(4, 3)
    opt = LBFGS(ours, lambda: _rosenbrock(ours))
    for _ in range(60):
        opt.step()
    torch_opt = torch.optim.LBFGS([ref], lr=1, max_iter=60, tolerance_grad=0,
                                  tolerance_change=0, line_search_fn="strong_wolfe")

    def closure():
        torch_opt.zero_grad()
        loss = _rosenbrock(ref)
        loss.backward()
        return loss

    torch_opt.step(closure)
    ones = torch.ones(4, dtype=torch.float64)
    torch.testing.assert_close(ours.detach(), ones, rtol=0, atol=1e-8)
    torch.testing.assert_close(ref.detach(), ones, rtol=0, atol=1e-8)


def test_lbfgs_at_a_stationary_point_stays():
    x = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = LBFGS(x, lambda: _rosenbrock(x))
    opt.step()
    assert torch.equal(x.detach(), torch.ones(3, dtype=torch.float64))
    assert opt.steps == 1 and opt.stalled and opt.evaluations == 1


def test_lbfgs_names_a_non_finite_objective():
    x = torch.ones(2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(LineSearchError, match="objective is nan at step 0"):
        LBFGS(x, lambda: (x * float("nan")).sum())


@pytest.mark.parametrize("shape", [(7, 3, 5), (1, 4, 1), (40, 2, 33)])
def test_blas_free_matmul_equals_the_product_and_its_gradient(shape, monkeypatch):
    m, k, n = shape
    gen = torch.Generator().manual_seed(m)
    a = torch.randn(m, k, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(k, n, generator=gen, dtype=torch.float64, requires_grad=True)
    ours = products.matmul(a, b)
    a0, b0 = a.detach(), b.detach()
    naive = torch.tensor([[sum(float(a0[i, j]) * float(b0[j, c]) for j in range(k))
                           for c in range(n)] for i in range(m)], dtype=torch.float64)
    torch.testing.assert_close(ours, naive, rtol=1e-13, atol=1e-13)
    ga, gb = torch.autograd.grad(ours.square().sum(), (a, b))
    ref_a, ref_b = torch.autograd.grad((a @ b).square().sum(), (a, b))
    torch.testing.assert_close(ga, ref_a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gb, ref_b, rtol=1e-12, atol=1e-12)
    # In row chunks (one row each here), the same bytes as in one piece.
    monkeypatch.setattr(products, "_CHUNK_ELEMENTS", 1)
    assert torch.equal(products.matmul(a, b), ours)
    assert float(products.dot(a, a)) == pytest.approx(float((a * a).sum()), rel=0)
    with pytest.raises(ValueError, match=r"shapes \(.*\) and \(.*\) do not chain"):
        products.matmul(a, b.T if k != n else b[:-1])


def test_float32_products_are_torch_own():
    a = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(products.matmul(a, a.T), a @ a.T)
    assert torch.equal(products.dot(a, a), torch.vdot(a.flatten(), a.flatten()))
