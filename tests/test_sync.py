"""`python -m pipeline sync-snakemake`: after `dvc repro` made results with changed params,
Snakemake takes them as up to date instead of redoing the jobs; it refuses, touching nothing,
while DVC itself sees stale stages. A plain `snakemake --touch` never vouches for outputs in
dvc.lock."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import sh
from tiny_project import copy_of

from pipeline.infra import stage_table

pytestmark = pytest.mark.e2e


@pytest.fixture
def private(tmp_path_factory, tmp_path) -> Path:
    return copy_of(tmp_path_factory, tmp_path / "project")


def change_params(root: Path) -> None:
    """A change only the six geometry jobs read (so `dvc repro` takes seconds, not minutes)."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["geometry"]["fit_threshold"] = 0.9
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def snakemake_plan(root: Path) -> str:
    result = sh(sys.executable, "-m", "snakemake", "-n", "--cores", "1", cwd=root)
    return result.stdout + result.stderr


def sync(root: Path):
    return sh(sys.executable, "-m", "pipeline", "sync-snakemake", cwd=root, check=False)


def geometry_files(root: Path) -> dict[Path, tuple[int, bytes]]:
    files = [p for p in (root / stage_table.GEOMETRY_DIR).rglob("*") if p.is_file()]
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}


def test_after_dvc_repro_snakemake_has_nothing_to_redo(private):
    change_params(private)
    sh("dvc", "repro", cwd=private)
    lock = (private / "dvc.lock").read_bytes()
    # Without the sync, Snakemake's records still hold the old params: it would redo them.
    assert "params have changed since last execution" in snakemake_plan(private)
    result = sync(private)
    assert result.returncode == 0, result.stderr
    assert "Nothing to be done" in snakemake_plan(private)
    assert (private / "dvc.lock").read_bytes() == lock  # DVC's record already was right
    assert sh("dvc", "status", "--json", cwd=private).stdout.strip() == "{}"


def test_sync_refuses_while_dvc_sees_stale_stages_and_touches_nothing(private):
    change_params(private)  # changed, but not reproduced
    before, lock = geometry_files(private), (private / "dvc.lock").read_bytes()
    stale = sorted(json.loads(sh("dvc", "status", "--json", cwd=private).stdout))
    assert stale == [f"{stage_table.GEOMETRY.name}@digits-1-{m}-none-0.1-64-60-{p}-0"
                     for m in ("ce", "ce_fixed", "supcon") for p in ("0.0", "0.3")]
    result = sync(private)
    assert result.returncode == 1
    shown = ", ".join(stale[:5])
    assert f"DVC reports 6 stage(s) not up to date ({shown} and 1 more)" in result.stderr
    assert "run `dvc repro` first" in result.stderr
    assert geometry_files(private) == before
    assert (private / "dvc.lock").read_bytes() == lock
    assert "params have changed since last execution" in snakemake_plan(private)


def test_plain_touch_leaves_dvc_lock_alone(private):
    change_params(private)
    lock = (private / "dvc.lock").read_bytes()
    result = sh(sys.executable, "-m", "snakemake", "--touch", "--cores", "1", cwd=private)
    assert "dvc.lock is left as it is" in result.stderr
    assert (private / "dvc.lock").read_bytes() == lock
    stale = sh("dvc", "status", "--json", cwd=private).stdout
    # DVC still sees the change
    assert stage_table.GEOMETRY.name + "@digits-1-ce-none-0.1-64-60-0.0-0" in stale
