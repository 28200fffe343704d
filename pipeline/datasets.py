"""Dataset registry: a name -> how to load its fixed train/test split.

Stages only ever call :func:`load`; adding a dataset (CIFAR-10/100 in a later issue) means
adding one :class:`DatasetSpec` here and its params schema entry, without touching a stage.
Images are kept as uint8 (N, C, H, W) with their value range, so the training loop can hold
them on the device compactly and normalise whole batches there.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) int64 in [0, K)


@dataclass(frozen=True)
class Data:
    name: str
    num_classes: int
    pixel_max: int  # largest possible pixel value (16 for digits, 255 for CIFAR)
    train: Split
    test: Split


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    loader: Callable[[dict], Data]


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int):
    """Indices (train, test), each sorted, holding out round(test_fraction * n_k) per class.

    Stratified so every class is in both parts at the same share; seeded so the split is a
    fixed property of the dataset, the same for every run.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        idx = idx[rng.permutation(idx.size)]
        n_test = int(round(test_fraction * idx.size))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _digits_csv() -> Path:
    """scikit-learn's copy of the UCI digits, located without importing scikit-learn (its
    import costs ~0.8 s per stage process); a test checks it equals ``load_digits()``."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-learn is not installed: it ships the digits dataset")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path}: digits data missing from the scikit-learn install")
    return path


def _load_digits(params: dict) -> Data:
    # The 1,797 real 8x8 handwritten digits shipped with scikit-learn: no download.
    table = np.loadtxt(_digits_csv(), delimiter=",", dtype=np.int64)  # (1797, 64 + 1)
    images = table[:, :64].astype(np.uint8).reshape(-1, 1, 8, 8)  # values 0..16
    labels = table[:, 64]
    train, test = _stratified_split(labels, params["test_fraction"], params["split_seed"])
    return Data(
        name="digits",
        num_classes=10,
        pixel_max=16,
        train=Split(images[train], labels[train]),
        test=Split(images[test], labels[test]),
    )


REGISTRY: dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", num_classes=10, image_shape=(1, 8, 8), loader=_load_digits),
}


def spec(name: str) -> DatasetSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r} (known: {', '.join(REGISTRY)})") from None


def load(name: str, params: dict) -> Data:
    """Load dataset ``name`` with its own params section (``datasets.<name>``)."""
    data = spec(name).loader(params)
    if data.train.labels.max() >= data.num_classes or data.train.labels.min() < 0:
        raise ValueError(f"dataset {name!r}: labels outside [0, {data.num_classes})")
    return data
