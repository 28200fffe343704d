"""The training set resident on the device, and whole-batch normalisation and augmentation.

Images stay uint8 on the device (CIFAR-10's 50,000 training images are 150 MB); a batch is
gathered, augmented and normalised with a handful of tensor operations, with no per-sample
Python. Every random number (batch indices, crop offsets, flips, shifts) comes from one CPU
generator, so the draws are the same on every device and a run is reproducible.

Multi-view models (supcon_mv) see each sampled image as several independently augmented
views (:meth:`DeviceImages.views`), augmented by ``VIEW_AUGMENTATIONS``: ``shift`` (a random
translation by at most ``MAX_SHIFT`` pixels, zero padding: the augmentation that suits 8x8
digits, where the standard pad-4 crop could move half the digit out of the frame) or
``standard`` (CIFAR's crop + flip).
"""

from __future__ import annotations

import numpy as np
import torch

AUGMENTATIONS = ("none", "standard")
VIEW_AUGMENTATIONS = ("shift", "standard")
PAD = 4  # pixels of zero padding for the standard random crop (CIFAR convention)
# Largest shift of the view augmentation ``shift``, pixels per axis: 1 of 8 on a digit, the
# relative size of a 4-pixel crop offset on a 32x32 CIFAR image (1/8 of the side).
MAX_SHIFT = 1


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

    def views(self, indices: torch.Tensor, augmentations: tuple[str, ...], views: int,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """``views`` normalised copies of the images at ``indices`` (b,), each augmented
        independently by every augmentation of ``augmentations`` in turn: (views * b, C, H, W),
        view v of image j at row v * b + j. All draws for all views in one call per
        augmentation, on the CPU generator."""
        x = self.images[indices.to(self.images.device)]  # (b, C, H, W) uint8
        x = x.repeat(views, 1, 1, 1)  # (views * b, C, H, W): view-major
        for augmentation in augmentations:
            if augmentation == "standard":
                x = random_crop_flip(x, generator)
            elif augmentation == "shift":
                x = random_shift(x, generator)
            else:
                raise ValueError(f"unknown view augmentation {augmentation!r} (known: "
                                 f"{VIEW_AUGMENTATIONS})")
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


def shift_images(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Translate image i of ``x`` (B, C, H, W) by ``offsets[:, i]`` = (down, right) pixels,
    filling with zeros: out[i, :, r, c] = x[i, :, r - down, c - right], 0 where that lies
    outside the image. ``offsets`` (2, B) integers in [-MAX_SHIFT, MAX_SHIFT]."""
    b, _, h, w = x.shape
    s = MAX_SHIFT
    padded = torch.nn.functional.pad(x, (s, s, s, s))  # (B, C, H+2s, W+2s)
    offsets = offsets.to(x.device)
    # out[r] = x[r - down] = padded[r - down + s]
    rows = (s - offsets[0])[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = (s - offsets[1])[:, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # advanced indexing: (B,1,1), (B,H,1), (B,1,W) -> (B, H, W, C); back to (B, C, H, W)
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def random_shift(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """:func:`shift_images` by offsets drawn uniformly from [-MAX_SHIFT, MAX_SHIFT]^2 per image
    (one draw of shape (2, B) from ``generator``, on the CPU)."""
    offsets = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (2, x.shape[0]), generator=generator)
    return shift_images(x, offsets)
