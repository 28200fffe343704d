"""Snakemake and DVC are two front-ends of one stage table: same jobs, same commands."""

from __future__ import annotations

import ast
import itertools
import re
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, copy_project, default_params, sh

from pipeline.infra import stage_table
from pipeline.infra.frontends import render
from pipeline.infra.runs import SETTING


def test_dvc_yaml_is_rendered_from_the_stage_table():
    assert (ROOT / "dvc.yaml").read_text() == render(ROOT / "params.yaml"), (
        "dvc.yaml is out of date: run `python -m pipeline dvc-yaml`"
    )


def snakemake_jobs(root) -> dict[str, tuple[str, frozenset[str]]]:
    """command -> (rule, outputs) of every job of a forced dry run of the real Snakefile."""
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dry-run", "--forceall", "--printshellcmds",
         "--cores", "1"],
        cwd=root, capture_output=True, text=True, check=True,
    ).stdout
    jobs = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        rule = re.match(r"(?:local)?rule (\w+):", block.strip())
        command = re.search(r"^Shell command: (.+)$", block, re.M)
        if not rule or rule.group(1) == "all":
            continue
        assert command, f"no shell command in job block:\n{block}"
        outputs = re.search(r"^\s+output: (.+)$", block, re.M).group(1).split(", ")
        jobs[command.group(1)] = (rule.group(1), frozenset(outputs))
    return jobs


def dvc_jobs(root) -> dict[str, tuple[str, frozenset[str]]]:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {
            s.cmd: (s.name.split("@")[0], frozenset(str(o.def_path) for o in s.outs))
            for s in repo.index.stages
        }


def check_identical_jobs(root, grid) -> None:
    smk, dvc = snakemake_jobs(root), dvc_jobs(root)
    per_run = [s for s in stage_table.STAGES if s.matrix]
    grid_wide = len(stage_table.STAGES) - len(per_run)  # aggregate, figures, free_features
    assert len(dvc) == sum(len(stage_table.grid_jobs(s, grid)) for s in per_run) + grid_wide
    assert set(smk) == set(dvc)
    for command, (stage_name, outs) in dvc.items():
        rule, smk_outs = smk[command]
        assert rule == stage_name  # one name per stage: the Snakemake rule is the DVC stage
        assert smk_outs == outs, command


def test_snakemake_and_dvc_run_identical_commands_with_identical_outputs(params):
    grid = params["grid"]
    axes = ("datasets", "models", "augmentations", "noise_fractions", "seeds")
    runs = {  # the union of the run sets' products, each run once
        run for sub in (grid.get("run_sets") or {"all": {}}).values()
        for run in itertools.product(*((sub or {}).get(a, grid[a]) for a in axes))
    }
    assert len(stage_table.grid_jobs(stage_table.TRAIN, grid)) == len(runs)
    check_identical_jobs(ROOT, grid)


def test_both_front_ends_run_the_union_of_run_sets_each_job_once(tmp_path):
    """Overlapping run sets: each run, and each run's labels, is one job in both front-ends,
    and DVC names it as its matrix did (train@digits-1-supcon-none-0.1-256-3000-0.0-0)."""
    params = default_params()
    params["grid"].update(augmentations=["none", "standard"], run_sets={
        "noise": {"augmentations": ["none"], "seeds": [0]},
        "clean": {"noise_fractions": [0.0]},  # overlaps `noise` at p = 0 without augmentation
        "supcon_noisy": {"models": ["supcon"], "augmentations": ["none"]},  # within the two
    })
    project = copy_project(tmp_path / "project")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(sys.executable, "-m", "pipeline", "dvc-yaml", cwd=project)
    grid = params["grid"]
    runs = {tuple(v for w, v in j.items() if w not in SETTING)  # the one default setting
            for j in stage_table.grid_jobs(stage_table.TRAIN, grid)}
    noise, seeds = grid["noise_fractions"], grid["seeds"]
    expected = (
        {("digits", m, "none", str(p), "0") for m in grid["models"] for p in noise}
        | {("digits", m, a, "0.0", str(s)) for m in grid["models"] for a in ("none", "standard")
           for s in seeds}
        | {("digits", "supcon", "none", str(p), str(s)) for p in noise for s in seeds}
    )
    assert runs == expected and len(stage_table.grid_jobs(stage_table.TRAIN, grid)) == len(expected)
    check_identical_jobs(project, grid)
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        names = {s.name for s in repo.index.stages}
    assert "train@digits-1-supcon-standard-0.1-256-3000-0.0-1" in names
    assert "noisy_labels@digits-1-0.0-1" in names  # once, for three run sets


def test_training_jobs_claim_one_gpu_each():
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dry-run", "--forceall", "--cores", "1"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    for block in re.split(r"\n(?=rule \w+:)", out):
        if block.startswith(("rule train:", "rule embed:")):
            assert re.search(r"resources: .*gpu=1", block), block


def pipeline_imports(module: str) -> set[str]:
    """Files of every pipeline module ``module`` imports, transitively, read from the source
    (function-level imports included, so a lazy import is not missed)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = f"{name.replace('.', '/')}.py"
        if path in seen or not (ROOT / path).is_file():
            continue
        seen.add(path)
        for node in ast.walk(ast.parse((ROOT / path).read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("pipeline.")]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
                todo.append(node.module)
                todo += [f"{node.module}.{a.name}" for a in node.names]  # submodules
    return seen


@pytest.mark.parametrize("stage", stage_table.STAGES, ids=lambda s: s.name)
def test_each_stage_depends_on_all_the_code_it_runs(stage):
    # A code file a stage runs but does not declare would change its outputs without either
    # front-end rerunning it, and the lineage would name code that did not make them.
    runs = pipeline_imports(stage.module)
    assert sorted(runs - set(stage.code)) == []
    assert set(stage.code) - runs <= set(stage_table._SHARED_CODE)  # no stale entries
