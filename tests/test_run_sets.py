"""`grid.run_sets`: the runs are a union of products, enumerated once (stage_table.grid_jobs) in a
fixed order; the params are checked so that a set can only choose among the axes' values."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, default_params

from pipeline.infra import stage_table
from pipeline.infra.config import ParamsError, check_dvc_yaml_grid, digest, validate_params
from pipeline.infra.frontends import job_lists
from pipeline.infra.runs import SETTING


def single_product() -> dict:
    """The default params with their grid as one product of its axes, over seeds 0 and 1."""
    params = default_params()
    params["grid"].pop("run_sets", None)
    params["grid"]["seeds"] = [0, 1]
    return params


def with_run_sets(run_sets, **axes) -> dict:
    params = single_product()
    params["grid"].update(axes, run_sets=run_sets)
    return params


def keys(stage, grid) -> list[tuple[str, ...]]:
    """Each job's values but those of the setting axes (one value each here)."""
    return [tuple(v for w, v in job.items() if w not in SETTING)
            for job in stage_table.grid_jobs(stage, grid)]


def test_a_single_product_is_the_product_in_itertools_order():
    grid = single_product()["grid"]
    for stage in (stage_table.NOISY_LABELS, stage_table.TRAIN):
        axes = [[str(v) for v in grid[stage_table.grid_axis(w)]] for w in stage.matrix]
        jobs = [tuple(job.values()) for job in stage_table.grid_jobs(stage, grid)]
        assert jobs == list(itertools.product(*axes))


def test_the_union_has_each_run_once_in_the_axes_order_whatever_the_sets():
    sets = {
        "a": {"models": ["ce"], "noise_fractions": [0.0, 0.4]},
        "b": {"models": ["supcon", "ce"], "noise_fractions": [0.4], "seeds": [1]},
    }
    grid = with_run_sets(sets)["grid"]
    runs = keys(stage_table.TRAIN, grid)
    assert runs == [
        ("digits", "supcon", "none", "0.4", "1"),
        ("digits", "ce", "none", "0.0", "0"), ("digits", "ce", "none", "0.0", "1"),
        ("digits", "ce", "none", "0.4", "0"), ("digits", "ce", "none", "0.4", "1"),
    ]  # ce at 0.4 seed 1 is in both sets: once
    swapped = with_run_sets({"b2": sets["b"], "a2": sets["a"]})["grid"]
    assert keys(stage_table.TRAIN, swapped) == runs
    # the labels of a (dataset, noise, seed) that several runs share: one job
    assert keys(stage_table.NOISY_LABELS, grid) == [
        ("digits", "0.0", "0"), ("digits", "0.0", "1"), ("digits", "0.4", "0"),
        ("digits", "0.4", "1"),
    ]


def test_a_set_names_values_as_the_axis_spells_them():
    grid = with_run_sets({"clean": {"noise_fractions": [0]}})["grid"]  # int 0, axis 0.0
    jobs = stage_table.grid_jobs(stage_table.TRAIN, grid)
    assert {job["noise_fraction"] for job in jobs} == {"0.0"}


def test_dvc_names_each_job_as_its_matrix_did():
    lists = job_lists(with_run_sets({"clean": {"noise_fractions": [0.0]}})["grid"])
    assert set(lists) == {"noisy_labels_jobs", "train_jobs"}
    assert lists["train_jobs"]["digits-1-ce_fixed-none-0.1-256-3000-0.0-1"] == {
        "dataset": "digits", "imbalance_ratio": "1", "model": "ce_fixed", "augmentation": "none",
        "temperature": "0.1", "batch_size": "256", "iterations": "3000", "noise_fraction": "0.0",
        "seed": "1",
    }
    assert list(lists["noisy_labels_jobs"]) == ["digits-1-0.0-0", "digits-1-0.0-1"]


def test_every_stage_name_of_the_default_params_is_one_dvc_lock_records():
    # the names dvc.yaml now gives the default grid's jobs are those its matrices gave them,
    # under which the committed dvc.lock (and the lineage read from it) records their runs
    import yaml

    locked = set(yaml.safe_load((ROOT / stage_table.LOCK_FILE).read_text())["stages"])
    lists = job_lists(default_params()["grid"])
    names = set()
    for stage in (s for s in stage_table.STAGES if s.matrix):
        var = "noisy_labels_jobs" if stage is stage_table.NOISY_LABELS else "train_jobs"
        names |= {f"{stage.name}@{key}" for key in lists[var]}
    # 15 label jobs (5 noise fractions x 3 seeds); 39 runs (supcon and ce at 5 noise
    # fractions, ce_fixed at 3; 3 seeds), each a train, an embed and a geometry job
    assert len(names) == 15 + 3 * 39 and names <= locked


@pytest.mark.parametrize("run_sets,axes,message", [
    ({"geometry_study": {}}, {}, r"grid\.run_sets\.geometry_study is an empty sub-grid \(\{\}\)"),
    ({"geometry_study": None}, {}, r"grid\.run_sets\.geometry_study is an empty sub-grid"),
    ({"geometry_study": {"seeds": []}}, {},
     r"grid\.run_sets\.geometry_study is an empty sub-grid \(seeds: \[\]\): it adds no runs"),
    ({"late": {"noise_fractions": [0.9]}}, {},
     r"grid\.run_sets\.late\.noise_fractions lists \[0\.9\], not in grid\.noise_fractions"),
    ({"a": {"seeds": [0]}}, {}, r"grid\.seeds lists \[1\], which no run set uses"),
    ({"a": {"augmentations": ["none"]}}, {"augmentations": ["none", "standard"]},
     r"grid\.augmentations lists \['standard'\], which no run set uses"),
    ({"a": {"noise": [0.0]}}, {}, r"unknown key 'grid\.run_sets\.a\.noise'"),
    ({}, {}, r"grid\.run_sets: \{\} should be non-empty"),
    ({"A": {"seeds": [0]}}, {}, r"grid\.run_sets: 'A' does not match"),
])
def test_a_bad_run_set_is_an_error_naming_it(run_sets, axes, message):
    with pytest.raises(ParamsError, match=message):
        validate_params(with_run_sets(run_sets, **axes), "params.yaml")


def test_every_dataset_and_augmentation_of_the_axes_needs_a_run():
    from pipeline.infra.datasets import REGISTRY

    other = next(n for n in REGISTRY if n.startswith("cifar"))
    params = with_run_sets({"a": {"datasets": ["digits"], "augmentations": ["none"]},
                            "b": {"datasets": [other], "augmentations": ["standard"]}},
                           datasets=["digits", other], augmentations=["none", "standard"])
    params["datasets"][other] = {"archive": "data/raw/x.tar.gz"}
    with pytest.raises(ParamsError, match=r"no run of dataset 'digits' with augmentation "
                                          r"'standard'"):
        validate_params(params)


def test_an_unchanged_single_product_grid_still_validates_as_before():
    params = single_product()
    assert validate_params(params) is params
    assert stage_table.RUN_SETS not in params["grid"]


def test_dvc_stops_a_stage_when_dvc_yaml_lists_another_grids_jobs(tmp_path, monkeypatch):
    grid = default_params()["grid"]
    (tmp_path / "params.yaml").write_text("")
    (tmp_path / "dvc.yaml").write_text("# header\n# Jobs of the grid with digest 0123\n")
    check_dvc_yaml_grid(tmp_path / "params.yaml", grid)  # not under DVC: nothing to check
    monkeypatch.setenv("DVC_STAGE", "aggregate")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    with pytest.raises(ParamsError, match=rf"grid has digest {digest(grid)}, but dvc.yaml lists "
                                          r"the jobs of grid 0123: run `python -m pipeline "
                                          r"dvc-yaml`"):
        check_dvc_yaml_grid(tmp_path / "params.yaml", grid)
    check_dvc_yaml_grid(Path(tmp_path / "other.yaml"), grid)  # another params file: no check
    (tmp_path / "dvc.yaml").write_text(f"# Jobs of the grid with digest {digest(grid)}\n")
    check_dvc_yaml_grid(tmp_path / "params.yaml", grid)


def test_dvc_yaml_drops_the_lock_entries_of_stages_the_grid_no_longer_has(tmp_path):
    from pipeline.infra.frontends import prune_lock, stage_names

    grid = default_params()["grid"]
    kept = sorted(stage_names(grid))[:2]
    gone = "train@digits-1-ce_fixed-none-0.1-256-3000-0.2-0"  # ce_fixed's run set has no p = 0.2
    assert gone not in stage_names(grid) and "aggregate" in stage_names(grid)
    lock = tmp_path / "dvc.lock"
    lock.write_text("schema: '2.0'\nstages:\n" + "".join(
        f"  {name}:\n    cmd: python -m pipeline x\n" for name in [*kept, gone]))
    assert prune_lock(grid, lock) == [gone]
    assert list(yaml.safe_load(lock.read_text())["stages"]) == kept
    assert prune_lock(grid, lock) == []  # nothing left to drop
