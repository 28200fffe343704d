"""One small training run of digits for the train and embed tests: a labels fixture (p = 0.3,
seed 0) and ``run``, which trains a model on it."""

from __future__ import annotations

import pytest

from pipeline.infra.runs import Run
from pipeline.stages.noisy_labels import make_noisy_labels
from pipeline.stages.train import train


@pytest.fixture
def labels(tmp_path, small_params):
    path = tmp_path / "labels.parquet"
    make_noisy_labels(small_params, dataset="digits", imbalance_ratio=1, noise_fraction=0.3,
                      seed=0, labels=path)
    return path


def run_of(params: dict, model: str, augmentation: str = "none", noise_fraction: float = 0.3,
           seed: int = 0, dataset: str = "digits") -> Run:
    """A run of ``params``' grid, its setting (imbalance, temperature, batch size, T) the
    grid's first values."""
    grid = params["grid"]
    return Run(dataset, grid["imbalance_ratios"][0], model, augmentation, grid["temperatures"][0],
               grid["batch_sizes"][0], grid["iterations"][0], noise_fraction, seed)


def run(tmp_path, params, labels, model, tag="a"):
    paths = {"checkpoint": tmp_path / f"{tag}.pt", "train_log": tmp_path / f"{tag}.parquet"}
    table = train(params, run=run_of(params, model), labels=labels, **paths)
    return table, paths
