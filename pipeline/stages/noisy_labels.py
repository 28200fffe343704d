"""Stage ``noisy_labels``: corrupt a fraction of the training labels, reproducibly.

Schemes (docs/paper.md, Section 5.3):
- ``flip`` (the paper's): exactly floor(p N) samples, chosen without replacement, get a label
  drawn uniformly from the K-1 *other* classes, so exactly floor(p N) labels are wrong.
- ``uniform`` (Zhang et al. 2017): floor(p N) samples are relabelled uniformly from all K, so
  about 1/K of them keep their label by chance.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.infra import datasets, inputs, schemas
from pipeline.infra.io import write_parquet

SCHEMA = schemas.LABELS


def corrupt_labels(
    labels: np.ndarray, num_classes: int, noise_fraction: float, scheme: str, seed: int
) -> np.ndarray:
    """Return a noisy copy of ``labels``; see the module docstring for the schemes."""
    if not 0.0 <= noise_fraction <= 1.0:
        raise ValueError(f"noise_fraction must be in [0, 1], got {noise_fraction}")
    if scheme not in ("flip", "uniform"):
        raise ValueError(f"unknown noise scheme {scheme!r} (known: flip, uniform)")
    n = labels.shape[0]
    # floor(p N) computed without float round-off turning e.g. 0.3 * 10 into 2.9999.
    count = math.floor(round(noise_fraction * n, 9))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n, size=count, replace=False)
    noisy = labels.copy()
    if scheme == "flip":
        # An offset in [1, K-1] added mod K is uniform over the K-1 other classes.
        offsets = rng.integers(1, num_classes, size=count)
        noisy[chosen] = (labels[chosen] + offsets) % num_classes
    else:
        noisy[chosen] = rng.integers(0, num_classes, size=count)
    return noisy


def make_noisy_labels(
    params: dict, *, dataset: str, imbalance_ratio: float, noise_fraction: float, seed: int,
    labels: Path,
) -> pa.Table:
    """Write the clean and noisy training labels of one (dataset, imbalance ratio, noise
    fraction, seed) to ``labels``: one row per training sample kept at that imbalance
    (``index`` into the dataset's training split), the noise drawn among the kept samples."""
    section = params["datasets"][dataset]
    data = datasets.load(dataset, section)
    kept = datasets.training_subset(dataset, section, data, imbalance_ratio)
    clean = data.train.labels[kept]
    scheme = params["noisy_labels"]["scheme"]
    noisy = corrupt_labels(clean, data.num_classes, noise_fraction, scheme, seed)
    table = pa.table(
        {
            "index": kept,
            "clean_label": clean,
            "noisy_label": noisy,
            "flipped": noisy != clean,
        },
        schema=SCHEMA,
    )
    meta = {"dataset": dataset, "noise_fraction": noise_fraction, "seed": seed, "scheme": scheme}
    if data.pixel_md5 is not None:  # the images these labels belong to, checked on load
        meta["pixel_md5"] = data.pixel_md5
    if float(imbalance_ratio) != 1.0:  # ratio 1 keeps the bytes a balanced run always had
        meta["imbalance"] = {
            **section["imbalance"],
            "ratio": float(imbalance_ratio),
            "class_counts": np.bincount(clean, minlength=data.num_classes).tolist(),
        }
    write_parquet(table, labels, metadata={"noisy_labels": meta, inputs.KEY: {"raw": data.raw_md5}})
    return table
