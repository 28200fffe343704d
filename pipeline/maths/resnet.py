"""ResNet-18 (He et al. 2016), CIFAR variant: the network torchvision's ``resnet18`` builds,
with a 3x3 stride-1 stem and no max-pool (docs/paper.md), written here so that a training or
embedding process does not import torchvision.

Why not torchvision's own: importing ``torchvision`` imports ``torchvision.ops``, which imports
``torch._dynamo`` (about 1.8 s of every ResNet process on one core; docs/design.md, "Test
times"), and nothing here uses either.

Same network, same numbers: module names (so checkpoint keys), construction order and
initialisation follow ``torchvision.models.resnet18(weights=None)`` with its ``conv1``,
``maxpool`` and ``fc`` replaced as the pipeline always did, so a seed gives the same weights
and a batch the same outputs and gradients bit for bit (tests/test_resnet.py compares them).
"""

from __future__ import annotations

import torch
from torch import nn

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (width, stride of its first block)
BLOCKS_PER_STAGE = 2  # ResNet-18
# torchvision's ImageNet stem and classifier, drawn only so that the random stream reaches the
# blocks and the replacement stem where it does in torchvision: they are never used.
IMAGENET_STEM = dict(in_channels=3, out_channels=64, kernel_size=7, stride=2, padding=3)
IMAGENET_CLASSES = 1000


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=kernel, stride=stride, padding=kernel // 2,
                     bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut (a 1x1 conv-BN where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = _conv(c_in, c_out, 3, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(c_out, c_out, 3)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class CifarResNet18(nn.Module):
    """(B, C, 32, 32) -> (B, 512): the pooled output of the last stage is the representation
    (no classifier)."""

    def __init__(self, in_channels: int):
        super().__init__()
        # The random stream as torchvision draws it: modules are created (each with its default
        # init) in its order, the shortcut of a stage before that stage's first block ...
        self.conv1 = nn.Conv2d(**IMAGENET_STEM, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        width = 64
        for index, (c_out, stride) in enumerate(STAGES, start=1):
            blocks = []
            for b in range(BLOCKS_PER_STAGE):
                s = stride if b == 0 else 1
                downsample = None
                if s != 1 or width != c_out:
                    downsample = nn.Sequential(_conv(width, c_out, 1, s), nn.BatchNorm2d(c_out))
                blocks.append(BasicBlock(width, c_out, s, downsample))
                width = c_out
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, IMAGENET_CLASSES)
        # ... then every conv is redrawn He-normal (fan-out) in module order, BatchNorm is
        # (1, 0) ...
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        # ... and last the CIFAR stem replaces the ImageNet one, keeping its default init (the
        # pipeline's choice since its first ResNet run), and the classifier goes.
        self.conv1 = _conv(in_channels, 64, 3)
        self.fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
