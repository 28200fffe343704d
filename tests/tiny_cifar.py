"""Tiny archives in the exact format of the official CIFAR python archives, for tests.

Same members, same pickled dict layout (bytes keys, uint8 (N, 3072) rows in CHW order),
only a handful of images per batch, so no test downloads anything.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from pipeline.infra.datasets import CIFAR
from pipeline.infra.io import file_md5


def write_tiny_cifar(path: Path, name: str, per_batch: int = 20, seed: int = 0) -> str:
    """Write a tiny archive for dataset ``name`` to ``path``; return its md5."""
    spec = CIFAR[name]
    k = 10 if name == "cifar10" else 100
    rng = np.random.default_rng(seed)

    def batch() -> bytes:
        labels = (np.arange(per_batch) % k).tolist()
        # class-dependent brightness, so a tiny model can learn something
        data = rng.integers(0, 64, size=(per_batch, 3072)) + np.array(labels)[:, None] * 2
        d = {spec.label_key: labels, b"data": data.astype(np.uint8), b"batch_label": b"tiny"}
        return pickle.dumps(d, protocol=2)

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for member in (*spec.train_members, spec.test_member):
            blob = batch()
            info = tarfile.TarInfo(f"{spec.folder}/{member}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return file_md5(path)
