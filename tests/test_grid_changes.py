"""Shrinking or growing params.yaml's grid never leaves stale results in the aggregate or the
figures, whichever front-end reruns: the summary, the runs table and every figure's recorded
inputs cover exactly the new grid, though the dropped runs' files are still on disk."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import sh
from tiny_project import copy_of, git_commit, head

from pipeline import stages
from pipeline.provenance import read_provenance

pytestmark = pytest.mark.e2e

KINDS = ("geometry", "iterations_to_fit", "training_curves")


@pytest.fixture
def private(tmp_path_factory, tmp_path) -> Path:
    return copy_of(tmp_path_factory, tmp_path / "project")


def set_grid(root: Path, **grid) -> dict:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["grid"].update(grid)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def expected_inputs(params: dict) -> dict[str, set[str]]:
    """Per figure kind, the files it must be drawn from: exactly the grid's runs."""
    jobs = stages.grid_jobs(stages.TRAIN, params["grid"])
    at_noise = [j for j in jobs if float(j["noise"]) == params["figures"]["geometry_noise"]]
    table = {stages.RUNS_TABLE}
    return {
        "geometry": table | {stages.fill(stages.COSINES, **j) for j in at_noise},
        "iterations_to_fit": table,
        "training_curves": table | {stages.fill(stages.TRAIN_LOG, **j) for j in jobs},
    }


def check_results_cover_exactly_the_grid(root: Path, params: dict) -> None:
    grid = params["grid"]
    runs = {(m, float(p)) for m in grid["models"] for p in grid["noise_fractions"]}
    with open(root / stages.SUMMARY_CSV) as f:
        summary = {(row["model"], float(row["noise_fraction"])) for row in csv.DictReader(f)}
    assert summary == runs
    table = pq.read_table(root / stages.RUNS_TABLE).to_pylist()
    assert {(r["model"], r["noise_fraction"], r["seed"]) for r in table} == {
        (m, p, s) for m, p in runs for s in grid["seeds"]
    }
    expected = expected_inputs(params)
    for kind in KINDS:
        for fmt in ("png", "pdf"):
            record = read_provenance(root / stages.FIGURES_DIR / f"{kind}_digits.{fmt}")
            assert set(record["inputs"]) == expected[kind], (kind, fmt)
            assert record["params"]["grid"] == grid
    assert json.loads(sh("dvc", "status", "--json", cwd=root).stdout) == {}
    sh(sys.executable, "-m", "pipeline", "lineage", stages.SUMMARY_CSV, "--verify", cwd=root)


def test_shrinking_the_grid_with_dvc_drops_its_runs_everywhere(private, tmp_path):
    old_figure = tmp_path / "old-iterations_to_fit.png"
    shutil.copy(private / stages.FIGURES_DIR / "iterations_to_fit_digits.png", old_figure)
    first_commit = head(private)

    params = set_grid(private, models=["supcon", "ce"], noise_fractions=[0.0])
    repro = sh("dvc", "repro", cwd=private).stdout
    assert "Running stage 'aggregate'" in repro and "Running stage 'figures'" in repro
    assert "Running stage 'train" not in repro  # nothing new to train
    dropped = private / "data/geometry/digits/ce_fixed/none/noise0.3-seed0/metrics.json"
    assert dropped.exists()  # still on disk: the results above must not have read it
    check_results_cover_exactly_the_grid(private, params)

    # A figure pasted from before the change: its inputs are no longer in dvc.lock, but in
    # the committed one, which lineage finds in git history.
    git_commit(private, "shrink the grid")
    result = sh(sys.executable, "-m", "pipeline", "lineage", str(old_figure), "--json",
                cwd=private)  # fmt: skip
    doc = json.loads(result.stdout)
    assert doc["lock"] == f"dvc.lock at commit {first_commit}"
    assert "figures@" not in {link["stage"] for link in doc["links"]}
    assert "geometry@digits-ce_fixed-none-0.3-0" in {link["stage"] for link in doc["links"]}


def test_growing_the_grid_with_snakemake_adds_its_runs_everywhere(private):
    params = set_grid(private, models=["supcon", "ce"], noise_fractions=[0.0, 0.3, 0.6])
    result = sh(sys.executable, "-m", "snakemake", "--cores", "2", cwd=private)
    out = result.stdout + result.stderr
    assert out.count("rule train_model:") == 2  # only the two new runs at p = 0.6 train
    check_results_cover_exactly_the_grid(private, params)
