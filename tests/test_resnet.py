"""pipeline/maths/resnet.py is torchvision's ResNet-18 (CIFAR variant, as the pipeline always
built it from torchvision) bit for bit: weights from a seed, outputs and gradients; and a
process that builds it imports neither torchvision nor torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from torch import nn

from pipeline.maths.resnet import CifarResNet18


def torchvision_cifar_resnet18(in_channels: int) -> nn.Module:
    """What pipeline/maths/models.py built before it had its own ResNet."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


def both(seed: int, in_channels: int = 3) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    ours = CifarResNet18(in_channels)
    torch.manual_seed(seed)
    reference = torchvision_cifar_resnet18(in_channels)
    return ours, reference


@pytest.mark.parametrize("seed", [0, 7])
def test_a_seed_gives_torchvisions_weights_under_the_same_keys_in_the_same_order(seed):
    ours, reference = both(seed)
    a, b = ours.state_dict(), reference.state_dict()
    assert list(a) == list(b)  # checkpoint keys and their order, so checkpoint bytes
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    torch.manual_seed(seed)
    CifarResNet18(3)
    after_ours = torch.rand(3)
    torch.manual_seed(seed)
    torchvision_cifar_resnet18(3)
    assert torch.equal(after_ours, torch.rand(3))  # the same draws, so later draws agree too


@pytest.mark.parametrize("train", [True, False])
def test_outputs_and_gradients_equal_torchvisions_bit_for_bit(train):
    ours, reference = both(3)
    ours.train(train)
    reference.train(train)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y_ours, y_ref = ours(x), reference(x)
    assert y_ours.shape == (4, 512) and torch.equal(y_ours, y_ref)
    (y_ours ** 2).sum().backward()
    (y_ref ** 2).sum().backward()
    grads = dict(reference.named_parameters())
    for name, p in ours.named_parameters():
        assert torch.equal(p.grad, grads[name].grad), name
    buffers = dict(reference.named_buffers())  # BatchNorm's running statistics
    for name, b in ours.named_buffers():
        assert torch.equal(b, buffers[name]), name


def test_a_resnet_process_imports_neither_torchvision_nor_dynamo():
    code = (
        "import sys, torch\n"
        "from pipeline.maths.models import Model, ModelConfig\n"
        "m = Model(ModelConfig('supcon', 'resnet18', (3, 32, 32), (), 512, 10, 1.0))\n"
        "m.represent(torch.zeros(2, 3, 32, 32)).sum().backward()\n"
        "print(sorted(n for n in ('torchvision', 'torch._dynamo') if n in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "[]"
