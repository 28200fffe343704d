"""`python -m pipeline lineage`: every link from a figure back to the raw data, as dvc.lock
records it; `--verify` names tampered outputs and stale stages; figures carry provenance."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, sh, tiny_params
from matplotlib.figure import Figure
from tiny_project import built, copy_of, git_commit, head

from pipeline.infra import stage_table
from pipeline.infra.datasets import _digits_csv
from pipeline.infra.provenance import NoProvenance, read_provenance
from pipeline.stages.figures import save_figure

pytestmark = pytest.mark.e2e

FIGURE = "data/figures/iterations_to_fit_digits.png"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return built(tmp_path_factory)


@pytest.fixture
def private(tmp_path_factory, tmp_path) -> Path:
    return copy_of(tmp_path_factory, tmp_path / "project")


def md5(path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def lineage(root, *args, code=0):
    result = sh(sys.executable, "-m", "pipeline", "lineage", *args, cwd=root, check=False)
    assert result.returncode == code, result.stdout + result.stderr
    return result


def lineage_json(root, *args, code=0) -> dict:
    return json.loads(lineage(root, *args, "--json", code=code).stdout)


def locked(root) -> dict:
    """dvc.lock as DVC reads it: ruamel.yaml, YAML 1.2 (1e-06 is a float)."""
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load((root / "dvc.lock").read_text())["stages"]


def run_names(stage: stage_table.Stage, grid: dict) -> set[str]:
    return {f"{stage.name}@" + "-".join(job.values()) for job in stage_table.grid_jobs(stage, grid)}


GRID = tiny_params()["grid"]
EVERY_RUN = (
    {"aggregate"}
    | run_names(stage_table.GEOMETRY, GRID)
    | run_names(stage_table.EMBED, GRID)
    | run_names(stage_table.TRAIN, GRID)
    | run_names(stage_table.NOISY_LABELS, GRID)
)


def test_figure_lineage_reaches_the_raw_data_with_lock_md5s_params_and_commit(project):
    doc = lineage_json(project, FIGURE)
    # only what the figure is drawn from is in its chain (the figures stage reads the
    # free-features records on a grid sweeping tau alone: tests/test_figures.py)
    assert {link["stage"] for link in doc["links"]} == {"figures"} | EVERY_RUN
    assert doc["links"][0]["stage"] == "figures" and doc["links"][0]["depth"] == 0
    assert doc["artifact"]["md5"] == doc["artifact"]["md5_on_disk"] == md5(project / FIGURE)
    lock = locked(project)
    for link in doc["links"]:
        recorded = lock[link["stage"]]
        assert [(o["path"], o["md5"]) for o in link["outs"]] == [
            (o["path"], o["md5"]) for o in recorded["outs"]
        ]
        assert link["params"] == recorded["params"]["params.yaml"]
        assert link["code_version"] == {
            "commit": head(project), "introduced": head(project), "state": "HEAD", "dirty": []
        }
        for item in link["inputs"]:
            for producer in item["from"]:
                outs = {o["path"]: o["md5"] for o in lock[producer]["outs"]}
                if item["path"] in outs:  # a file input: exactly that producer's out
                    assert outs[item["path"]] == item["md5"]
    # The end of the chain: scikit-learn's copy of the digits, read by three stage families.
    (raw,) = doc["raw"]
    assert raw["dataset"] == "digits"
    assert raw["md5"] == raw["recorded_md5"] == md5(_digits_csv())
    assert raw["path"] == "sklearn/datasets/data/digits.csv.gz"
    assert raw["version"] == importlib.metadata.version("scikit-learn")
    assert {name.split("@")[0] for name in raw["used_by"]} == {"noisy_labels", "train", "embed"}
    # The figure's embedded record: the files it was drawn from (the runs, and the growth
    # fit with its interval and band, as aggregate wrote it).
    assert doc["provenance"]["inputs"] == {
        "data/summary/runs.parquet": md5(project / "data/summary/runs.parquet"),
        "data/summary/growth.json": md5(project / "data/summary/growth.json"),
    }
    assert doc["repository"] == {"root": str(project), "head": head(project), "dirty": []}


def test_text_lineage_names_every_stage_family_and_the_raw_file(project):
    text = lineage(project, FIGURE).stdout
    assert f"HEAD {head(project)}, working tree clean" in text
    # Breadth first: aggregate reads the training logs as well as the geometry. The figures
    # stage also reads the free features (for the temperature figure), but this figure is
    # not drawn from them: they are not in its chain.
    assert "chain      22 stages: figures, aggregate, geometry x6, train x6, " \
        "embed x6, noisy_labels x2; raw data: digits" in text
    assert f"digits  sklearn/datasets/data/digits.csv.gz  {md5(_digits_csv())}" in text
    for line in ("in       data/summary/runs.parquet", "code     commit " + head(project)[:12]):
        assert line in text


def test_verify_passes_on_a_fresh_run(project):
    result = lineage(project, FIGURE, "--verify")
    assert "verify: ok - 22 stages" in result.stdout


def test_geometry_figure_follows_only_the_runs_it_shows(project):
    doc = lineage_json(project, "data/figures/geometry_digits.pdf")
    figures = doc["links"][0]
    (geometry_dir,) = [i for i in figures["inputs"] if i["path"] == "data/geometry"]
    shown = {job["model"] for job in stage_table.grid_jobs(stage_table.GEOMETRY, GRID)
             if float(job["noise_fraction"]) == 0.0}
    assert geometry_dir["read"] == sorted(
        f"data/geometry/digits/rho1/{m}/none/tau0.1-b64-T60/noise0.0-seed0/cosines.parquet"
        for m in shown
    )
    assert geometry_dir["from"] == sorted(f"geometry@digits-1-{m}-none-0.1-64-60-0.0-0"
                                          for m in shown)
    assert "data/train_logs" not in {i["path"] for i in figures["inputs"]}  # not drawn from


@pytest.mark.parametrize(
    ("artifact", "families"),
    [
        ("data/models/digits/rho1/ce/none/tau0.1-b64-T60/noise0.3-seed0.pt",
         {"train", "noisy_labels"}),
        ("data/embeddings/digits/rho1/supcon/none/tau0.1-b64-T60/noise0.0-seed0.parquet",
         {"embed", "train", "noisy_labels"}),
        ("data/geometry/digits/rho1/ce_fixed/none/tau0.1-b64-T60/noise0.3-seed0/metrics.json",
         {"geometry", "embed", "train", "noisy_labels"}),
        ("train@digits-1-ce-none-0.1-64-60-0.0-0", {"train", "noisy_labels"}),
    ],
)
def test_lineage_of_per_run_artifacts_follows_their_own_run(project, artifact, families):
    doc = lineage_json(project, artifact, "--verify")
    names = [link["stage"] for link in doc["links"]]
    assert {n.split("@")[0] for n in names} == families
    assert len(names) == len(families)  # one run: one stage of each family
    assert doc["raw"][0]["dataset"] == "digits" and doc["verified"]


def test_unknown_artifact_is_an_error_naming_it(project):
    result = lineage(project, "data/nothing/here.parquet", code=2)
    assert f"{project}/data/nothing/here.parquet: not an output of any stage in {project}/" \
        "dvc.lock" in result.stderr


def test_verify_names_a_tampered_output_and_every_stale_consumer(private):
    log = "data/train_logs/digits/rho1/ce/none/tau0.1-b64-T60/noise0.3-seed0.parquet"
    with open(private / log, "ab") as f:
        f.write(b"\0")
    doc = lineage_json(private, "data/figures/training_curves_digits.png", "--verify", code=1)
    found = {(p["kind"], p["stage"], p["path"]) for p in doc["problems"]}
    assert found == {
        ("tampered", "train@digits-1-ce-none-0.1-64-60-0.3-0", log),
        ("stale", "geometry@digits-1-ce-none-0.1-64-60-0.3-0", log),
        ("stale", "figures", "data/train_logs"),  # the directory holding it
        ("stale", "aggregate", "data/train_logs"),  # it stacks the logs into curves
    }
    text = lineage(private, "data/figures/training_curves_digits.png", "--verify", code=1).stdout
    tampered = f"TAMPERED   train@digits-1-ce-none-0.1-64-60-0.3-0: {log}: md5 on disk"
    assert f"{tampered} {md5(private / log)}" in text


def test_verify_names_a_tampered_figure(private):
    figure = private / FIGURE
    figure.write_bytes(figure.read_bytes() + b"edited")  # still a PNG with its record
    doc = lineage_json(private, FIGURE, "--verify", code=1)
    found = {(p["kind"], p["path"]) for p in doc["problems"]}
    assert found == {("tampered", "data/figures"), ("tampered", FIGURE)}
    (out,) = [p for p in doc["problems"] if p["path"] == "data/figures"]
    assert "changed: iterations_to_fit_digits.png" in out["detail"]


def test_verify_names_stale_params_and_code_and_flags_the_dirty_tree(private):
    params = yaml.safe_load((private / "params.yaml").read_text())
    params["geometry"]["fit_threshold"] = 0.9
    (private / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with open(private / "pipeline/stages/aggregate.py", "a") as f:
        f.write("# edited\n")
    doc = lineage_json(private, FIGURE, "--verify", code=1)
    found = {(p["kind"], p["stage"], p["detail"]) for p in doc["problems"]}
    expected = {
        ("stale", name, "params geometry.fit_threshold = 0.9 (recorded 1.0)")
        for name in run_names(stage_table.GEOMETRY, GRID)
    }
    changed = md5(private / "pipeline/stages/aggregate.py")
    for stage in ("aggregate", "figures"):  # figures runs aggregate.fit_power_law
        expected.add(("stale", stage, f"code changed: md5 is {changed} (recorded "
                      f"{md5(ROOT / 'pipeline/stages/aggregate.py')})"))
    assert found == expected
    (aggregate,) = [link for link in doc["links"] if link["stage"] == "aggregate"]
    assert aggregate["code_version"]["dirty"] == ["pipeline/stages/aggregate.py"]
    assert doc["repository"]["dirty"] == ["params.yaml", "pipeline/stages/aggregate.py"]


def test_a_pasted_figure_is_traced_from_its_embedded_provenance(project, tmp_path):
    for name in ("iterations_to_fit_digits.png", "geometry_digits.pdf"):
        pasted = tmp_path / f"pasted-{name}"
        shutil.copy(project / "data/figures" / name, pasted)
        doc = lineage_json(project, str(pasted), "--repo", str(project), "--verify")
        first = doc["links"][0]
        assert first["stage"] == "figures (from the embedded provenance)"
        assert first["outs"] == [{"path": str(pasted), "md5": md5(pasted)}]
        assert {link["stage"] for link in doc["links"][1:]} == EVERY_RUN
        assert doc["lock"] == "dvc.lock" and doc["verified"]


def test_figure_provenance_round_trips_and_keeps_bytes_deterministic(tmp_path):
    record = {"schema": "supcon-geometry/figure-provenance/1", "params": {"odd": "a(b)\\c)"},
              "inputs": {"x": "0" * 32}}
    saved = {}
    for run in ("a", "b"):
        fig = Figure(figsize=(2, 2))
        fig.subplots().plot([0, 1], [1, 0])
        (tmp_path / run).mkdir()
        saved[run] = save_figure(fig, tmp_path / run, "f", dpi=20, record=record)
    for a, b in zip(saved["a"], saved["b"], strict=True):
        assert a.read_bytes() == b.read_bytes()
        assert read_provenance(a) == record
    plain = tmp_path / "plain"
    plain.mkdir()
    fig = Figure(figsize=(2, 2))
    for path in save_figure(fig, plain, "f", dpi=20):
        with pytest.raises(NoProvenance, match="no 'Provenance' entry"):
            read_provenance(path)


def test_rerun_after_a_commit_gives_the_recorded_figure_bytes(private):
    """No commit id in the figures: committing and redrawing leaves dvc.lock true."""
    (private / "NOTES.md").write_text("a commit that changes no stage input\n")
    git_commit(private, "unrelated commit")
    before = {p.name: p.read_bytes() for p in (private / "data/figures").glob("*.p[dn][fg]")}
    sh("dvc", "repro", "--force", "--single-item", "figures", cwd=private)
    after = {p.name: p.read_bytes() for p in (private / "data/figures").glob("*.p[dn][fg]")}
    assert after == before and len(after) == 2 * 5  # 5 figures, PNG + PDF
    assert sh("dvc", "status", "--json", cwd=private).stdout.strip() == "{}"
    lineage(private, FIGURE, "--verify")


def test_dvc_added_raw_data_ends_the_chain_and_is_verified(tmp_path):
    """A stage reading a `dvc add`-ed archive, named by a dataset's params as the CIFAR
    archives are (``datasets.cifar10.archive``, with its expected md5)."""
    root = tmp_path / "raw"
    (root / "data/raw").mkdir(parents=True)
    sh("git", "init", "-q", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    archive = "data/raw/archive.bin"
    (root / archive).write_bytes(b"raw bytes\n")
    sh("dvc", "add", "-q", archive, cwd=root)
    (root / "prep.sh").write_text(f"cp {archive} data/prep.bin\n")
    (root / "params.yaml").write_text(yaml.safe_dump(
        {"datasets": {"cifar10": {"archive": archive, "md5": md5(root / archive)}}}))
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"prep": {
        "cmd": "sh prep.sh", "deps": ["prep.sh", archive], "params": ["datasets.cifar10"],
        "outs": ["data/prep.bin"]}}}))
    sh("dvc", "repro", "-q", cwd=root)
    doc = lineage_json(root, "data/prep.bin", "--verify")
    assert [link["stage"] for link in doc["links"]] == ["prep"]
    checksum = md5(root / archive)
    assert doc["raw"] == [
        {"path": archive, "md5": checksum, "tracked_by": f"{archive}.dvc", "used_by": ["prep"]},
        {"dataset": "cifar10", "used_by": ["prep"], "path": archive, "md5": checksum,
         "published_md5": checksum, "tracked_by": f"{archive}.dvc", "recorded_md5": checksum},
    ]
    assert doc["links"][0]["code"] == [{"path": "prep.sh", "md5": md5(root / "prep.sh")}]
    (root / "data/raw/archive.bin").write_bytes(b"other bytes\n")
    doc = lineage_json(root, "data/prep.bin", "--verify", code=1)
    assert {(p["kind"], p["stage"], p["path"]) for p in doc["problems"]} == {
        ("tampered", None, "data/raw/archive.bin"),
        ("stale", "prep", "data/raw/archive.bin"),
    }


def test_code_changed_in_a_later_commit_names_the_commits_that_held_it(private):
    made = head(private)
    with open(private / "pipeline/stages/aggregate.py", "a") as f:
        f.write("# a later change\n")
    later = git_commit(private, "change the aggregate stage")
    doc = lineage_json(private, "data/summary/summary.csv")
    (aggregate,) = [link for link in doc["links"] if link["stage"] == "aggregate"]
    assert aggregate["code_version"] == {
        "commit": made, "introduced": made, "state": "older commit", "dirty": []
    }
    (geometry, *_) = [link for link in doc["links"] if link["stage"].startswith("geometry@")]
    assert geometry["code_version"]["commit"] == later  # untouched code: still HEAD's
    assert f"code of commit(s) {made[:12]}, changed since" in lineage(
        private, "data/summary/summary.csv"
    ).stdout
