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

from pipeline.infra import stage_table
from pipeline.infra.provenance import read_provenance

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


def expected_inputs(params: dict, augmentation: str = "none") -> dict[str, set[str]]:
    """Per figure kind, the files it must be drawn from: exactly the grid's runs."""
    jobs = [j for j in stage_table.grid_jobs(stage_table.TRAIN, params["grid"])
            if j["augmentation"] == augmentation]
    noise = params["figures"]["geometry_noise"]
    at_noise = [j for j in jobs if float(j["noise_fraction"]) == noise]
    table = {stage_table.RUNS_TABLE}
    return {
        "geometry": table | {stage_table.fill(stage_table.COSINES, **j) for j in at_noise},
        "iterations_to_fit": table | {stage_table.GROWTH_METRICS},  # its fit, as aggregate wrote it
        "training_curves": table | {stage_table.fill(stage_table.TRAIN_LOG, **j) for j in jobs},
    }


def check_results_cover_exactly_the_grid(root: Path, params: dict) -> None:
    grid = params["grid"]
    jobs = stage_table.grid_jobs(stage_table.TRAIN, grid)  # the union of the run sets, if any
    runs = {(j["model"], j["augmentation"], float(j["noise_fraction"])) for j in jobs}
    with open(root / stage_table.SUMMARY_CSV) as f:
        summary = {(row["model"], row["augmentation"], float(row["noise_fraction"]))
                   for row in csv.DictReader(f)}
    assert summary == runs
    table = pq.read_table(root / stage_table.RUNS_TABLE).to_pylist()
    assert {(r["model"], r["augmentation"], r["noise_fraction"], r["seed"]) for r in table} == {
        (j["model"], j["augmentation"], float(j["noise_fraction"]), int(j["seed"])) for j in jobs
    }
    for augmentation in grid["augmentations"]:
        label = "digits" if augmentation == "none" else f"digits-{augmentation}"
        expected = expected_inputs(params, augmentation)
        for kind in KINDS:
            for fmt in ("png", "pdf"):
                record = read_provenance(root / stage_table.FIGURES_DIR / f"{kind}_{label}.{fmt}")
                assert set(record["inputs"]) == expected[kind], (kind, fmt)
                assert record["params"]["grid"] == grid
    assert json.loads(sh("dvc", "status", "--json", cwd=root).stdout) == {}
    # dvc.lock records exactly the stages dvc.yaml now lists: none of a dropped run is left
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        listed = {s.name for s in repo.index.stages}
    assert set(yaml.safe_load((root / stage_table.LOCK_FILE).read_text())["stages"]) == listed
    sh(sys.executable, "-m", "pipeline", "lineage", stage_table.SUMMARY_CSV, "--verify", cwd=root)


def test_shrinking_the_grid_with_dvc_drops_its_runs_everywhere(private, tmp_path):
    old_figure = tmp_path / "old-iterations_to_fit.png"
    shutil.copy(private / stage_table.FIGURES_DIR / "iterations_to_fit_digits.png", old_figure)
    first_commit = head(private)

    params = set_grid(private, models=["supcon", "ce"], noise_fractions=[0.0])
    sh(sys.executable, "-m", "pipeline", "dvc-yaml", cwd=private)  # dvc.yaml lists the jobs
    repro = sh("dvc", "repro", cwd=private).stdout
    assert "Running stage 'aggregate'" in repro and "Running stage 'figures'" in repro
    assert "Running stage 'train" not in repro  # nothing new to train
    dropped = (private / "data/geometry/digits/rho1/ce_fixed/none/tau0.1-b64-T60/noise0.3-seed0"
               / "metrics.json")
    assert dropped.exists()  # still on disk: the results above must not have read it
    check_results_cover_exactly_the_grid(private, params)

    # A figure pasted from before the change: its inputs are no longer in dvc.lock, but in
    # the committed one, which lineage finds in git history.
    git_commit(private, "shrink the grid")
    result = sh(sys.executable, "-m", "pipeline", "lineage", str(old_figure), "--json",
                cwd=private)
    doc = json.loads(result.stdout)
    assert doc["lock"] == f"dvc.lock at commit {first_commit}"
    assert "figures@" not in {link["stage"] for link in doc["links"]}
    stages = {link["stage"] for link in doc["links"]}
    assert "geometry@digits-1-ce_fixed-none-0.1-64-60-0.3-0" in stages


def test_growing_the_grid_with_snakemake_adds_its_runs_everywhere(private):
    params = set_grid(private, models=["supcon", "ce"], noise_fractions=[0.0, 0.3, 0.6])
    result = sh(sys.executable, "-m", "snakemake", "--cores", "2", cwd=private)
    out = result.stdout + result.stderr
    assert out.count("rule train:") == 2  # only the two new runs at p = 0.6 train
    check_results_cover_exactly_the_grid(private, params)


def test_run_sets_with_dvc_cover_their_union_once_dvc_yaml_follows(private):
    """Run sets that drop ce and ce_fixed at p = 0.3 and overlap at p = 0: `dvc repro` refuses
    while dvc.yaml lists the old grid's jobs, then, re-rendered, reruns only aggregate and
    figures (every run of the union is on disk) and covers exactly the union."""
    params = set_grid(private, run_sets={
        "clean": {"noise_fractions": [0.0]},
        "supcon": {"models": ["supcon"]},  # overlaps `clean` at p = 0
    })
    stale = sh("dvc", "repro", cwd=private, check=False)
    assert stale.returncode != 0
    fix = "run `python -m pipeline dvc-yaml`, then `dvc repro` again"
    assert fix in stale.stderr + stale.stdout
    sh(sys.executable, "-m", "pipeline", "dvc-yaml", cwd=private)
    repro = sh("dvc", "repro", cwd=private).stdout
    assert "Running stage 'aggregate'" in repro and "Running stage 'train" not in repro
    assert len(stage_table.grid_jobs(stage_table.TRAIN, params["grid"])) == 4
    check_results_cover_exactly_the_grid(private, params)


def test_a_run_set_with_snakemake_trains_only_its_new_runs(private):
    """A geometry study with augmentation for supcon at p = 0: one new run, whose labels the
    existing p = 0 run already made; dvc.yaml is re-rendered by the run's record step."""
    params = set_grid(private, augmentations=["none", "standard"], run_sets={
        "noise_study": {"augmentations": ["none"]},
        "geometry_study": {"models": ["supcon"], "augmentations": ["standard"],
                           "noise_fractions": [0.0]},
    })
    result = sh(sys.executable, "-m", "snakemake", "--cores", "2", cwd=private)
    out = result.stdout + result.stderr
    assert out.count("rule train:") == 1 and "rule noisy_labels:" not in out
    sh(sys.executable, "-m", "pipeline", "dvc-yaml", "--check", cwd=private)
    check_results_cover_exactly_the_grid(private, params)
