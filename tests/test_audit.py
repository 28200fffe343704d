"""`python -m pipeline audit`: every stage upstream of an artifact rerun in a clean clone of
HEAD, each output compared with dvc.lock; refusals on a dirty tree and a stale lock; links
computed without the portable numerics compared by their metrics' values."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import sh
from tiny_project import copy_of, git_commit, head

from pipeline.infra import audit as audit_module

pytestmark = pytest.mark.e2e

FIGURE = "data/figures/iterations_to_fit_digits.png"
CHECKPOINT = "data/models/digits/rho1/ce/none/tau0.1-b64-T60/noise0.3-seed0.pt"
RUN = "digits/rho1/ce/none/tau0.1-b64-T60/noise0.0-seed0"
METRICS = f"data/geometry/{RUN}/metrics.json"
COSINES = f"data/geometry/{RUN}/cosines.parquet"
GEOMETRY_STAGE = "geometry@digits-1-ce-none-0.1-64-60-0.0-0"
UPSTREAM_OF_METRICS = {"noisy_labels@digits-1-0.0-0", "train@digits-1-ce-none-0.1-64-60-0.0-0",
                       "embed@digits-1-ce-none-0.1-64-60-0.0-0"}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """One private copy for the tests that leave the project as they found it."""
    return copy_of(tmp_path_factory, tmp_path_factory.mktemp("audit") / "project")


@pytest.fixture
def private(tmp_path_factory, tmp_path) -> Path:
    return copy_of(tmp_path_factory, tmp_path / "project")


def audit(root: Path, *args, code=0, tmp: Path | None = None):
    env = os.environ | ({"TMPDIR": str(tmp)} if tmp else {})
    result = sh(sys.executable, "-m", "pipeline", "audit", *args, "--jobs", "2", cwd=root,
                check=False, env=env)
    assert result.returncode == code, result.stdout + result.stderr
    return result


def rows(text: str) -> dict[str, tuple[str, str]]:
    """output path -> (its link's stage, verdict) from the audit's table."""
    found, stage = {}, None
    for line in text.split("\n\n", 1)[1].split("\n\naudit:", 1)[0].splitlines():
        if not line.startswith("  "):
            stage = line.split("  (", 1)[0]
            continue
        verdict, path = re.match(r"  (not judged|\S+)\s+(\S+)", line).groups()
        found[path] = (stage, verdict)
    return found


def clones(tmp: Path) -> list[Path]:
    """The audit's scratch directories under the TMPDIR it was given."""
    return sorted(tmp.glob("pipeline-audit-*"))


def cache_objects(root: Path) -> set[str]:
    return {str(p) for p in (root / ".dvc/cache").rglob("*") if p.is_file()}


def lock_outputs(root: Path, artifact: str) -> set[str]:
    """Every file lineage says the artifact's chain produced (directories expanded)."""
    doc = json.loads(sh(sys.executable, "-m", "pipeline", "lineage", artifact, "--json",
                        cwd=root).stdout)
    files = set()
    for link in doc["links"]:
        for out in link["outs"]:
            if out["md5"].endswith(".dir"):
                files |= {f"{out['path']}/{p.name}" for p in (root / out["path"]).iterdir()
                          if not p.name.startswith(".")}
            else:
                files.add(out["path"])
    return files


@pytest.mark.parametrize(("artifact", "n_stages", "keep"), [(FIGURE, 22, False),
                                                            (CHECKPOINT, 2, True)])
def test_audit_of_the_clean_project_reproduces_every_link(clean, tmp_path, artifact, n_stages,
                                                          keep):
    before = cache_objects(clean)
    text = audit(clean, artifact, *(["--keep"] if keep else []), tmp=tmp_path).stdout
    found = rows(text)
    assert set(found) == lock_outputs(clean, artifact)  # every output of every link
    assert {verdict for _, verdict in found.values()} == {"identical"}
    assert len({stage for stage, _ in found.values()}) == n_stages
    assert f"audit: ok - {n_stages} stages, {len(found)} outputs" in text
    if keep:  # the clone of HEAD, with the rerun's own outputs
        (scratch,) = clones(tmp_path)
        assert f"rerun      {n_stages} stages in {scratch} (kept)" in text
        assert head(scratch / "repo") == head(clean)
        assert (scratch / "repo" / artifact).read_bytes() == (clean / artifact).read_bytes()
    else:
        assert f"rerun      {n_stages} stages in a temporary clone (removed)" in text
        assert clones(tmp_path) == []
    assert sh("git", "status", "--porcelain", cwd=clean).stdout == ""
    assert cache_objects(clean) == before  # the rerun stored nothing in the original's cache


def test_a_code_change_recorded_without_a_rerun_is_found_and_located(private):
    """geometry.py changed and committed, dvc.lock's code md5s re-recorded (`dvc commit -f`)
    without rerunning: the lock is not stale, but its geometry outputs were not made by the
    code it names."""
    with open(private / "pipeline/stages/geometry.py", "a") as f:
        f.write(
            "\n\n_measured_cosines = GeometryAccumulator.cosines\n\n\n"
            "def _shifted_cosines(self):\n"
            "    cosines = _measured_cosines(self)\n"
            "    cosines['class_means'] = cosines['class_means'] + 0.125\n"
            "    return cosines\n\n\n"
            "GeometryAccumulator.cosines = _shifted_cosines\n"
        )
    git_commit(private, "geometry: shift the class-mean cosines")
    sh("dvc", "commit", "-f", "-q", cwd=private)
    git_commit(private, "dvc.lock: record the new geometry code without a rerun")
    assert sh("dvc", "status", "--json", cwd=private).stdout.strip() == "{}"
    checkpoint = f"data/models/{RUN}.pt"
    with open(private / checkpoint, "ab") as f:  # the workspace copy no longer dvc.lock's:
        f.write(b"edited")  # the original to compare with comes from the DVC cache
    text = audit(private, METRICS, code=1).stdout
    found = rows(text)
    assert "originals  6 from the workspace, 1 from the DVC cache" in text
    assert found[checkpoint] == ("train@digits-1-ce-none-0.1-64-60-0.0-0", "identical")
    assert {found[path] for path in (METRICS, COSINES)} == {(GEOMETRY_STAGE, "DIFFERS")}
    assert {stage for stage, verdict in found.values() if verdict == "identical"} \
        == UPSTREAM_OF_METRICS
    # 45 class-mean pairs of 10 classes, each cosine moved by exactly the shift
    assert f"  {GEOMETRY_STAGE}: {COSINES}: differs: column 'value': max |diff| 0.125 " \
        "(45 of " in text
    assert f"  {GEOMETRY_STAGE}: {METRICS}: differs: key 'class_mean_cosine_" in text
    assert "audit: 2 difference(s) in 1 stage(s)" in text


def test_a_dirty_tree_or_a_stale_lock_is_refused_before_anything_runs(private, tmp_path):
    (private / "NOTES.md").write_text("not committed\n")
    result = audit(private, METRICS, code=audit_module.EXIT_DIRTY, tmp=tmp_path)
    assert result.stderr == "audit: refused: the git working tree is dirty (1 paths: NOTES.md); " \
        "the audit reruns HEAD: commit or stash first\n"
    assert result.stdout == "" and clones(tmp_path) == []
    (private / "NOTES.md").unlink()
    params = (private / "params.yaml").read_text()
    (private / "params.yaml").write_text(params.replace("fit_threshold: 1.0", "fit_threshold: 0.9"))
    git_commit(private, "a params change without a rerun")
    result = audit(private, METRICS, code=audit_module.EXIT_STALE, tmp=tmp_path)
    assert result.stderr.startswith(f"audit: refused: dvc.lock is stale: {GEOMETRY_STAGE}: "
                                    "params.yaml: geometry modified; run `dvc repro`")
    assert len(result.stderr.splitlines()) == 1 and clones(tmp_path) == []


def test_a_native_link_is_compared_by_its_numbers_and_says_so(private):
    sh("dvc", "repro", "-q", "--force", "--single-item", GEOMETRY_STAGE, cwd=private,
       env=os.environ | {"PIPELINE_NUMERICS": "native"})
    git_commit(private, "geometry of one run redone without the portable numerics")
    assert '"mode": "native"' in (private / METRICS).read_text()
    text = audit(private, METRICS).stdout
    found = rows(text)
    assert found[METRICS] == (GEOMETRY_STAGE, "consistent")
    assert found[COSINES] == (GEOMETRY_STAGE, "not judged")  # bytes bound to a machine
    (note,) = [line for line in text.splitlines() if line.startswith(GEOMETRY_STAGE)]
    assert "(numerics native on " in note and "metrics compared as numbers" in note
    assert {stage for stage, verdict in found.values() if verdict == "identical"} \
        == UPSTREAM_OF_METRICS
    assert "without a seed spread (one seed, or constant): rel. tolerance" in text
    assert "(1 compared as numbers, 1 not judged: numerics bound to a machine)" in text


def test_numbers_are_judged_by_the_recorded_seed_spread():
    point = ("digits", "ce", "none", 0.0)
    recorded = {"nc1": (0.50, point, "nc1"), "seed": (0, point, "seed")}
    spread = {"nc1": 0.02}.get

    def judge(nc1: float):
        rerun = {"nc1": (nc1, point, "nc1"), "seed": (0, point, "seed")}
        return audit_module.compare_numbers(recorded, rerun, lambda m, p: spread(m))

    ok, text = judge(0.51)
    assert ok and "worst nc1: 0.5 -> 0.51 (|diff| 0.01, seed spread 0.02)" in text
    ok, text = judge(0.53)
    assert not ok and "worst nc1: 0.5 -> 0.53 (|diff| 0.03, seed spread 0.02)" in text
    ok, _ = audit_module.compare_numbers(recorded, {"nc1": (None, point, "nc1")},
                                         lambda m, p: None)
    assert not ok  # a metric gone is a difference


def test_checkpoints_differ_by_their_first_differing_tensor(tmp_path):
    weights = {"layer.weight": torch.zeros(2, 2), "layer.bias": torch.zeros(2)}
    torch.save({"config": {"seed": 0}, "state_dict": weights}, tmp_path / "a.pt")
    weights["layer.bias"] = torch.tensor([0.0, 0.5])
    torch.save({"config": {"seed": 0}, "state_dict": weights}, tmp_path / "b.pt")
    assert audit_module.describe(tmp_path / "a.pt", tmp_path / "b.pt") == \
        "tensor 'state_dict.layer.bias': max |diff| 0.5 (1 of 2 values differ)"
