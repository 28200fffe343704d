"""The training set resident on the device, and whole-batch normalisation and augmentation.

Images stay uint8 on the device (CIFAR-10's 50,000 training images are 150 MB); a batch is
gathered, augmented and normalised with a handful of tensor operations, with no per-sample
Python. Every random number (batch indices, crop offsets, flips) comes from one CPU
generator, so the draws are the same on every device and a run is reproducible.
"""

from __future__ import annotations

import numpy as np
import torch

AUGMENTATIONS = ("none", "standard")
PAD = 4  # pixels of zero padding for the standard random crop (CIFAR convention)


class DeviceImages:
    """uint8 images on ``device`` plus the per-channel statistics that normalise them."""

    def __init__(self, images: np.ndarray, pixel_max: int, mean, std, device,
                 channels_last: bool = False):
        self.images = torch.as_tensor(images, device=device)  # (N, C, H, W) uint8
        self.pixel_max = pixel_max
        shape = (1, -1, 1, 1)
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(shape)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device).view(shape)
        self.channels_last = channels_last

    def __len__(self) -> int:
        return self.images.shape[0]

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / self.pixel_max  # (B, C, H, W) in [0, 1]
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def batch(self, indices: torch.Tensor, augmentation: str = "none",
              generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised (and augmented) images at ``indices``; random draws on the CPU."""
        x = self.images[indices.to(self.images.device)]  # (B, C, H, W) uint8
        if augmentation == "standard":
            x = random_crop_flip(x, generator)
        elif augmentation != "none":
            raise ValueError(f"unknown augmentation {augmentation!r} (known: {AUGMENTATIONS})")
        return self.normalise(x)

    def chunks(self, size: int):
        """Normalised images in order, ``size`` at a time (for evaluation and embedding)."""
        for start in range(0, len(self), size):
            yield self.normalise(self.images[start : start + size])


def channel_statistics(images: np.ndarray, pixel_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the training images scaled to [0, 1] (float64)."""
    x = images.astype(np.float64) / pixel_max
    return x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop of the original size from the image zero-padded by PAD on each side,
    then a horizontal flip with probability 1/2: the standard CIFAR augmentation, for the
    whole batch at once."""
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * PAD + 1, (2, b), generator=generator).to(x.device)
    flips = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    padded = torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD))  # (B, C, H+2P, W+2P)
    rows = offsets[0][:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[1][:, None] + torch.arange(w, device=x.device)  # (B, W)
    # A flipped crop reads its columns right to left.
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # advanced indexing: (B,1,1), (B,H,1), (B,1,W) -> (B, H, W, C); back to (B, C, H, W)
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)
