"""The real Snakefile and dvc.yaml on a temporary copy of the project with tiny params:
Snakemake runs everything and records it into dvc.lock; DVC then agrees it is up to date,
and a changed training param makes exactly the stages that read it (and downstream) stale."""

from __future__ import annotations

import json
import re
import sys

import pytest
import yaml
from conftest import sh, tiny_params
from tiny_project import copy_of

from pipeline.infra import stage_table

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    # A private copy of the session's tiny project (tests/tiny_project.py), built by one
    # plain `snakemake` run; these tests change it.
    return copy_of(tmp_path_factory, tmp_path_factory.mktemp("e2e") / "project")


def dvc_status(root) -> dict:
    return json.loads(sh("dvc", "status", "--json", cwd=root).stdout)


def test_snakemake_produces_summary_and_figures(project):
    summary = (project / "data/summary/summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 3 * 2  # header + (3 models x 2 noise fractions)
    figures = sorted(p.name for p in (project / "data/figures").iterdir())
    for stem in ("geometry_digits", "iterations_to_fit_digits", "training_curves_digits"):
        assert f"{stem}.png" in figures and f"{stem}.pdf" in figures


def test_after_snakemake_dvc_is_up_to_date_and_nothing_reruns(project):
    assert dvc_status(project) == {}
    assert "Nothing to be done" in sh(
        sys.executable, "-m", "snakemake", "-n", "--cores", "1", cwd=project
    ).stdout
    repro = sh("dvc", "repro", cwd=project)
    assert "Running stage" not in repro.stdout
    # DVC rewrites modification times: a newer input alone must not make Snakemake rerun.
    for path in (project / "data/labels").rglob("*.parquet"):
        path.touch()
    assert "Nothing to be done" in sh(
        sys.executable, "-m", "snakemake", "-n", "--cores", "1", cwd=project
    ).stdout


def file_hashes(root) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / "data").rglob("*"))
        if p.is_file()
    }


def test_every_stage_rerun_gives_byte_identical_outputs(project):
    """Every stage of the stage table reruns (one noise level's chain, for every model, then
    everything downstream, and the free features) and writes the same bytes. One chain, not
    --forceall: the other noise level's jobs run the same code on other inputs, and the golden
    md5s (test_numerics) pin their bytes already."""
    before = file_hashes(project)
    assert len(before) > 20
    forced = ["data/labels/digits/rho1/noise0.3-seed0.parquet",
              "data/free_features/records.parquet"]
    rerun = sh(sys.executable, "-m", "snakemake", "--cores", "2", "--forcerun", *forced,
               cwd=project)
    ran = set(re.findall(r"^localrule (\w+):", rerun.stdout + rerun.stderr, re.M))
    assert ran == {stage.name for stage in stage_table.STAGES} | {"all"}
    assert file_hashes(project) == before
    assert dvc_status(project) == {}


def test_param_change_reruns_exactly_its_readers_and_downstream(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["models"]["supcon"]["learning_rate"] = 0.05
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    # exactly the stages that read train.models.supcon: its training runs, and the embed
    # stages that check their checkpoint against it
    stale = set(dvc_status(project))
    assert stale == {f"{stage}@digits-1-supcon-none-0.1-64-60-{p}-0" for stage in ("train", "embed")
                     for p in ("0.0", "0.3")}

    ran = set(re.findall(r"Running stage '([^']+)'", sh("dvc", "repro", cwd=project).stdout))
    runs = {f"digits-1-supcon-none-0.1-64-60-{p}-0" for p in ("0.0", "0.3")}
    expected = {f"{stage}@{run}" for stage in ("train", "embed", "geometry") for run in runs}
    assert ran == expected | {"aggregate", "figures", "claims"}
    assert dvc_status(project) == {}


def test_bad_params_stop_snakemake_with_a_named_error(project, tmp_path):
    bad = tiny_params()
    bad["train"]["common"]["bach_size"] = 64
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = sh(
        sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(path),
        cwd=project, check=False,
    )
    assert result.returncode != 0
    assert "unknown key 'train.common.bach_size'" in result.stdout + result.stderr
