"""Encoders and heads of the models: supcon, supcon_mv, ce and ce_fixed.

- ``supcon``: encoder output projected onto the unit sphere; no head.
- ``supcon_mv``: the same network as supcon; it differs in what it is trained on (two
  augmented views of every sampled image, multi-view supcon: pipeline/stages/train.py).
- ``ce``: raw encoder output, bias-free learned linear head.
- ``ce_fixed``: as ce, but the head is a fixed regular simplex of row norm ``head_norm``
  (a buffer, not a parameter: it is never trained and is stored with the checkpoint).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.maths.resnet import CifarResNet18
from pipeline.maths.simplex import regular_simplex

MODELS = ("supcon", "supcon_mv", "ce", "ce_fixed")
# Models whose representation is the encoder output on the unit sphere, with no head.
SPHERE_MODELS = ("supcon", "supcon_mv")
# Models trained on several augmented views of each sampled image, and how many views.
MULTIVIEW_MODELS = {"supcon_mv": 2}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; stored inside every checkpoint."""

    model: str
    encoder: str
    input_shape: tuple[int, int, int]  # (C, H, W)
    hidden_dims: tuple[int, ...]
    representation_dim: int
    num_classes: int
    head_norm: float  # row norm of the fixed simplex head (ce_fixed only)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["hidden_dims"] = list(self.hidden_dims)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**{**d, "input_shape": tuple(d["input_shape"]),
                      "hidden_dims": tuple(d["hidden_dims"])})


class MLPEncoder(nn.Module):
    """Flattened image -> hidden Linear-BatchNorm-ReLU layers -> linear representation (no
    final activation or bias, so representations can take the signs a centred simplex needs
    and cannot collapse onto a constant bias direction)."""

    def __init__(self, input_shape: tuple[int, int, int], hidden_dims, representation_dim: int):
        super().__init__()
        c, h, w = input_shape
        dims = [c * h * w, *hidden_dims]
        layers: list[nn.Module] = [nn.Flatten()]
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            # BatchNorm as in the paper's ResNet: without it, SGD at lr 0.1 on heavily
            # noisy labels can kill every ReLU and collapse all representations to 0.
            layers += [nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], representation_dim, bias=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, C, H, W) -> (B, h)


class ResNet18Encoder(nn.Module):
    """ResNet-18, CIFAR variant (docs/paper.md): a 3x3 stride-1 stem and no max-pool, so
    32x32 inputs keep their resolution; the 512-d pooled output is the representation (no fc
    layer). torchvision's network, built without importing torchvision
    (pipeline/maths/resnet.py)."""

    def __init__(self, input_shape: tuple[int, int, int], hidden_dims, representation_dim: int):
        super().__init__()
        if representation_dim != 512:
            raise ValueError(
                f"encoder resnet18 has a 512-d pooled output, representation_dim is "
                f"{representation_dim}"
            )
        self.net = CifarResNet18(input_shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 3, 32, 32) -> (B, 512)


ENCODERS = {"mlp": MLPEncoder, "resnet18": ResNet18Encoder}


class Model(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.model not in MODELS:
            raise ValueError(f"unknown model {config.model!r} (known: {', '.join(MODELS)})")
        self.config = config
        self.encoder = ENCODERS[config.encoder](
            config.input_shape, config.hidden_dims, config.representation_dim
        )
        k, h = config.num_classes, config.representation_dim
        if config.model == "ce":
            self.head = nn.Parameter(torch.empty(k, h))
            nn.init.kaiming_uniform_(self.head, a=5**0.5)  # nn.Linear's default init
        elif config.model == "ce_fixed":
            simplex = regular_simplex(k, h, radius=config.head_norm)
            self.register_buffer("head", torch.tensor(simplex, dtype=torch.float32))
        else:
            self.head = None

    @property
    def has_head(self) -> bool:
        return self.head is not None

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        """The representation the loss sees: on the unit sphere for supcon(_mv), raw for ce."""
        z = self.encoder(x)
        return F.normalize(z, dim=1) if self.config.model in SPHERE_MODELS else z

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.head.T  # (B, h) @ (h, K) -> (B, K); bias-free
