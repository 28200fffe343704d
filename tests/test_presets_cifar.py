"""The paper's presets (presets/paper.yaml, presets/multiview_cifar.yaml) run end to end,
cut to a few iterations on tiny archives of the official CIFAR format.

A module of its own, apart from tests/test_presets.py: these are the suite's slowest tests
(ResNet-18 on the CPU), and pytest-xdist (--dist loadscope) keeps a module on one worker.
"""

from __future__ import annotations

import sys

import pandas as pd
import pytest
import yaml
from conftest import ROOT, copy_project, sh, tiny_params
from tiny_cifar import write_tiny_cifar


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["paper", "multiview_cifar"])
def test_paper_preset_cut_to_a_few_iterations_runs_end_to_end(tmp_path, name):
    """The real Snakefile on the preset (and on its multi-view variant), with tiny archives of
    the official format, one SGD step of a small batch (and one evaluation after it) and one
    noise level: every stage, both datasets, all models, every free-features setting (a few
    steps each). ResNet-18 on the CPU makes its forward passes the test's dearest part."""
    project = copy_project(tmp_path / "project")
    preset = yaml.safe_load((ROOT / "presets" / f"{name}.yaml").read_text())
    for dataset in ("cifar10", "cifar100"):  # 2 images a batch file: 10 to train on (one
        # batch of 8), 2 to test (most classes absent, as in any subsample of cifar100). The
        # ResNet's forward passes over them are what a process spends beside importing torch
        # (train 2.5 of 5 CPU-s, embed 1.2 of 3.7 at 4 images a file, python shim per process)
        archive = project / preset["datasets"][dataset]["archive"]
        preset["datasets"][dataset]["md5"] = write_tiny_cifar(archive, dataset, per_batch=2)
    preset["grid"].update(noise_fractions=[0.0], seeds=[0], batch_sizes=[8])
    if name == "multiview_cifar":  # the paper's models ran above: supcon_mv alone, one dataset
        preset["grid"].update(datasets=["cifar10"], models=["supcon_mv"])
        preset["free_features"] = tiny_params()["free_features"]  # checked with "paper"
    else:  # every free-features setting of the paper, cut to a few steps like the networks
        preset["free_features"].update(iterations=50, log_every=25, snapshots=[0, 20, 50])
        preset["free_features"]["multiset"].update(iterations=3, single_batch_iterations=5,
                                                   single_batch_starts=1, snapshots=[0, 3])
    preset["grid"]["iterations"] = [1]
    preset["train"]["common"].update(eval_every=1, compile=False)  # one evaluation
    # The linear probe on 512-d features cut like the SGD: its 1,000 L-BFGS iterations over
    # 513 K parameters were most of each geometry job (cifar100: 2.9 of 4.5 s)
    preset["geometry"]["probe"]["max_iterations"] = 20
    cut = project / "paper-cut.yaml"
    cut.write_text(yaml.safe_dump(preset))
    sh(sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(cut), cwd=project)
    summary = (project / "data/summary/summary.csv").read_text().splitlines()
    grid = preset["grid"]
    # datasets x models x augmentations (none, standard)
    assert len(summary) == 1 + len(grid["datasets"]) * len(grid["models"]) * 2
    figures = {p.name for p in (project / "data/figures").iterdir()}
    for dataset in grid["datasets"]:
        assert f"geometry_{dataset}.png" in figures
        assert f"geometry_{dataset}-standard.png" in figures
    if name == "paper":
        records = pd.read_parquet(project / "data/free_features/records.parquet")
        free = preset["free_features"]
        assert set(records.loss_name) == set(free["losses"])
        assert set(records.num_classes) == set(free["num_classes"])
