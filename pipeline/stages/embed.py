"""Stage ``embed``: a trained encoder's representations of every train and test sample.

Writes one row per sample (schema ``schemas.embeddings``) with the producing run's typed
config in the file's key-value metadata, and the head's rows (``schemas.head``; none for
supcon and supcon_mv) to a second file, so the geometry stage needs neither torch nor the
checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from pipeline.infra import inputs, numerics, schemas
from pipeline.infra.devices import pick_device
from pipeline.infra.io import write_parquet
from pipeline.infra.nested import MISSING, differences
from pipeline.infra.runs import Run
from pipeline.maths.models import Model
from pipeline.stages.train import (
    TrainConfig,
    device_images,
    load_run_data,
    read_checkpoint,
    represent_all,
)


def config_differences(stored: dict, current: dict) -> list[str]:
    """``key: checkpoint value vs params value`` for every leaf where the two configs differ."""
    def show(value):
        return "absent" if value is MISSING else repr(value)

    return [f"{key}: {show(a)} in the checkpoint vs {show(b)} now"
            for key, a, b in differences(stored, current)]


def _fixed_size_list(values: np.ndarray) -> pa.FixedSizeListArray:
    n, dim = values.shape
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, dim)


def extract_embeddings(
    params: dict, *, run: Run, labels: Path, checkpoint: Path, embeddings: Path, head: Path
) -> pa.Table:
    cfg, state, meta = read_checkpoint(Path(checkpoint))
    if cfg.run != run:
        raise ValueError(f"{checkpoint}: made for {cfg.run}, expected {run}")
    # the labels given are the bytes the checkpoint was trained on (not another file of
    # the same run, regenerated or edited since)
    made_from = inputs.digests(checkpoint=checkpoint, labels=labels)
    inputs.check_made_from(checkpoint, meta, "labels", labels, md5=made_from["labels"])
    current = TrainConfig.from_params(params, run).to_dict()
    differences = config_differences(cfg.to_dict(), current)
    if differences:
        raise ValueError(
            f"{checkpoint}: made with a different config than the params now say "
            f"({'; '.join(differences)}): retrain it first"
        )
    numerics.configure_torch(torch)  # as in training: one thread, the portable kernels
    device = pick_device()
    numerics.configure_device(torch, device, cfg.deterministic)
    data, label_table = load_run_data(params, run, Path(labels))
    net = Model(cfg.model)
    net.load_state_dict(state)
    net.to(device).eval()

    batch = params["embed"]["batch_size"]
    train_images, test_images = device_images(data, device)
    z_train = represent_all(net, train_images, batch).cpu().numpy()  # (N, h) float32
    z_test = represent_all(net, test_images, batch).cpu().numpy()
    n_train, n_test = z_train.shape[0], z_test.shape[0]
    dim = cfg.model.representation_dim
    table = pa.table(
        {
            # into each split of the dataset: a training row's sample, also when imbalanced
            "index": np.concatenate([label_table["index"].to_numpy(),
                                     np.arange(n_test)]).astype(np.int64),
            "split": ["train"] * n_train + ["test"] * n_test,
            "clean_label": np.concatenate([data.train.labels, data.test.labels]),
            "noisy_label": pa.array(
                np.concatenate([label_table["noisy_label"].to_numpy(), np.zeros(n_test, int)]),
                mask=np.arange(n_train + n_test) >= n_train,  # no training label on test rows
                type=pa.int64(),
            ),
            "embedding": _fixed_size_list(np.concatenate([z_train, z_test])),
        },
        schema=schemas.embeddings(dim),
    )
    write_parquet(table, embeddings, metadata={"train_config": cfg.to_dict(),
                                               inputs.KEY: made_from})

    if net.has_head:
        weights = net.head.detach().cpu().numpy()  # (K, h)
        head_table = pa.table(
            {"class": np.arange(weights.shape[0], dtype=np.int64),
             "weight": _fixed_size_list(weights)},
            schema=schemas.head(dim),
        )
    else:
        head_table = schemas.head(dim).empty_table()
    write_parquet(head_table, head, metadata={"train_config": cfg.to_dict(),
                                              inputs.KEY: made_from})
    return table
