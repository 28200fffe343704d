"""Whole-batch augmentation equals the per-sample definition; normalisation is exact."""

import numpy as np
import torch

from pipeline.maths.batches import PAD, DeviceImages, channel_statistics, random_crop_flip


def naive_crop_flip(image: np.ndarray, top: int, left: int, flip: bool) -> np.ndarray:
    """One image (C, H, W): zero-pad by PAD, crop H x W at (top, left), maybe mirror."""
    c, h, w = image.shape
    padded = np.zeros((c, h + 2 * PAD, w + 2 * PAD), dtype=image.dtype)
    padded[:, PAD : PAD + h, PAD : PAD + w] = image
    crop = padded[:, top : top + h, left : left + w]
    return crop[:, :, ::-1] if flip else crop


def test_random_crop_flip_equals_per_sample_loop():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 3, 32, 32), dtype=np.uint8)
    out = random_crop_flip(torch.as_tensor(images), torch.Generator().manual_seed(5)).numpy()
    # replay the generator's draws in the same order as the function
    g = torch.Generator().manual_seed(5)
    offsets = torch.randint(0, 2 * PAD + 1, (2, 64), generator=g).numpy()
    flips = (torch.rand(64, generator=g) < 0.5).numpy()
    for i in range(64):
        expected = naive_crop_flip(images[i], offsets[0, i], offsets[1, i], flips[i])
        np.testing.assert_array_equal(out[i], expected)
    assert 0 < flips.sum() < 64 and len(set(offsets[0])) > 1


def test_augmentation_keeps_every_pixel_value_in_range_and_shape():
    x = torch.full((8, 3, 32, 32), 200, dtype=torch.uint8)
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert set(out.unique().tolist()) <= {0, 200}  # original pixels or zero padding


def test_normalisation_uses_training_statistics():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 17, size=(50, 1, 8, 8), dtype=np.uint8)
    mean, std = channel_statistics(images, 16)
    data = DeviceImages(images, 16, mean, std, "cpu")
    x = torch.cat(list(data.chunks(7))).double().numpy()
    np.testing.assert_allclose(x.mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(x.std(), 1.0, rtol=1e-5)
    batch = data.batch(torch.tensor([3, 3, 0]))
    np.testing.assert_allclose(batch[0].numpy(), x[3], rtol=1e-6)
    np.testing.assert_array_equal(batch[0].numpy(), batch[1].numpy())
