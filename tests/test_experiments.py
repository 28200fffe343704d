"""Comparing experiments the DVC way on the tiny project (issue 24): a param changed with
`dvc exp run -S` reruns only its readers; `dvc exp show --only-changed` fits one screen;
`dvc metrics diff`, `dvc params diff` and `dvc plots diff` name what changed; a queued sweep
runs and `dvc exp apply` brings one back. The same comparison after a Snakemake run."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import time

import pandas as pd
import pytest
import yaml
from conftest import sh
from tiny_project import copy_of

from pipeline.infra import stage_table

pytestmark = pytest.mark.e2e

SCREEN_COLUMNS = 30  # what "fits one screen" means here


@pytest.fixture
def project(tmp_path_factory, tmp_path):
    return copy_of(tmp_path_factory, tmp_path / "project")


def dvc(root, *args) -> str:
    return sh("dvc", *args, cwd=root).stdout


def exp_table(root, *args) -> list[dict]:
    """`dvc exp show --csv` as rows (the header is the columns a reader would see)."""
    return list(csv.DictReader(io.StringIO(dvc(root, "exp", "show", "--csv", *args))))


def stricter_collapse(root) -> tuple[float, set[str]]:
    """A collapse tolerance every model's sample-to-mean cosine interval lies above, and the
    verdicts.json names of the rows it turns: the change a comparison must show."""
    table = pd.read_csv(root / stage_table.CLAIMS_CSV)
    rows = table[(table.claim == "ii") & (table.key == "collapse")]
    assert not rows.verdict.eq("replicates").all()  # the change below must show
    names = {f"ii/digits/{r.model}/collapse" for r in rows.itertuples()
             if r.verdict != "replicates"}
    return round(float(rows.ci_low.min()) - 0.05, 2), names


def test_exp_run_show_and_diffs_name_exactly_what_changed(project):
    threshold, turned = stricter_collapse(project)
    ran = sh("dvc", "exp", "run", "-S", f"claims.collapse_cosine={threshold}", "-n", "loose",
             cwd=project)
    assert re.findall(r"Running stage '([^']+)'", ran.stdout) == ["claims"]  # its reader only

    header = list(exp_table(project, "--only-changed")[0])
    assert len(header) <= SCREEN_COLUMNS, header
    assert "claims.collapse_cosine" in header and turned <= set(header)
    full = list(exp_table(project)[0])
    per_run = {"final_loss", "test_accuracy_class_mean", "iterations_to_fit"}
    assert not per_run & {c.rsplit("/", 1)[-1] for c in full}  # no per-run metric columns

    changed = json.loads(dvc(project, "metrics", "diff", "--json"))
    assert set(changed) == {stage_table.CLAIMS_METRICS}
    assert {k: v["new"] for k, v in changed[stage_table.CLAIMS_METRICS].items()} == {
        name: "replicates" for name in turned}
    params = json.loads(dvc(project, "params", "diff", "--json"))
    (change,) = params["params.yaml"].items()
    assert change[0] == "claims.collapse_cosine"
    assert (change[1]["old"], change[1]["new"]) == (0.99, threshold)
    plots = json.loads(dvc(project, "plots", "diff", "HEAD", "loose", "--json", "-o",
                           str(project.parent / "plots")))
    assert set(plots["data"]) == {plot.name for plot in stage_table.PLOTS}
    for plot in plots["data"].values():  # each view overlays both revisions
        assert [entry["revisions"] for entry in plot] == [["HEAD", "loose"]]


def test_a_queued_sweep_runs_and_one_experiment_is_applied(project):
    for name, value in (("nc1-a", 0.3), ("nc1-b", 0.6)):
        dvc(project, "exp", "run", "--queue", "-S", f"claims.nc1={value}", "-n", name)
    try:
        dvc(project, "queue", "start", "-j", "2")
        deadline = time.monotonic() + 240
        while any(word in dvc(project, "queue", "status") for word in ("Queued", "Running")):
            assert time.monotonic() < deadline, dvc(project, "queue", "status")
            time.sleep(1)
        status = dvc(project, "queue", "status")
        assert status.count("Success") == 2, status
    finally:
        sh("dvc", "queue", "stop", "--kill", cwd=project, check=False)
    rows = {r["Experiment"]: r for r in exp_table(project, "--only-changed")}
    assert {rows["nc1-a"]["claims.nc1"], rows["nc1-b"]["claims.nc1"]} == {"0.3", "0.6"}
    dvc(project, "exp", "apply", "nc1-b")
    assert yaml.safe_load((project / "params.yaml").read_text())["claims"]["nc1"] == 0.6
    assert dvc(project, "status").strip() == "Data and pipelines are up to date."


def test_the_same_comparison_after_a_snakemake_run(project):
    """Driven by Snakemake: change params.yaml, run, and DVC compares the workspace with the
    last commit (the onsuccess handler records the run into dvc.lock)."""
    threshold, turned = stricter_collapse(project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["claims"]["collapse_cosine"] = threshold
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(sys.executable, "-m", "snakemake", "--cores", "2", cwd=project)
    changed = json.loads(dvc(project, "metrics", "diff", "--json"))
    assert set(changed[stage_table.CLAIMS_METRICS]) == turned
    assert "claims.collapse_cosine" in json.loads(dvc(project, "params", "diff", "--json"))[
        "params.yaml"]
    assert dvc(project, "status").strip() == "Data and pipelines are up to date."


def test_a_caption_or_a_figure_title_reruns_no_training(project):
    """The report's caption is read by `snakemake --report` alone: editing it reruns nothing.
    A figure's drawn title is code of the figures stage: editing it reruns figures, no
    training, no embedding, no geometry (both front-ends plan the same)."""
    with open(project / "report" / "figure.rst", "a") as f:
        f.write("\nA sentence added to the caption.\n")
    assert "Nothing to be done" in sh(sys.executable, "-m", "snakemake", "-n", "--cores", "1",
                                      cwd=project).stdout
    assert dvc(project, "status").strip() == "Data and pipelines are up to date."
    figures = project / "pipeline" / "stages" / "figures.py"
    figures.write_text(figures.read_text().replace("iterations to fit (SGD steps)",
                                                   "iterations to fit (steps of SGD)", 1))
    stale = json.loads(dvc(project, "status", "--json"))
    assert set(stale) == {"figures"}
    planned = sh(sys.executable, "-m", "snakemake", "-n", "--cores", "1", cwd=project).stdout
    assert set(re.findall(r"^(?:local)?rule (\w+):", planned, re.M)) == {"figures", "all"}
