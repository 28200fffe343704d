"""pipeline.maths.optim against torch.optim (SGD, Adam): the same parameters, bit for bit."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.maths.optim import SGD, Adam


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
