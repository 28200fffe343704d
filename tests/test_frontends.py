"""Snakemake and DVC are two front-ends of one stage table: same jobs, same commands."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest
from conftest import ROOT

from pipeline import stages
from pipeline.__main__ import ENTRY_POINTS
from pipeline.dvc_yaml import render


def test_dvc_yaml_is_rendered_from_the_stage_table():
    assert (ROOT / "dvc.yaml").read_text() == render(), (
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


def test_snakemake_and_dvc_run_identical_commands_with_identical_outputs(params):
    smk, dvc = snakemake_jobs(ROOT), dvc_jobs(ROOT)
    grid = params["grid"]
    runs = len(grid["models"]) * len(grid["noise_fractions"]) * len(grid["seeds"])
    grid_wide = 3  # aggregate, figures, free_features
    assert len(dvc) == len(grid["noise_fractions"]) * len(grid["seeds"]) + 3 * runs + grid_wide
    assert set(smk) == set(dvc)
    rule_of = {s.name: s.rule for s in stages.STAGES}
    for command, (stage_name, outs) in dvc.items():
        rule, smk_outs = smk[command]
        assert rule == rule_of[stage_name]
        assert smk_outs == outs, command


def test_training_jobs_claim_one_gpu_each():
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dry-run", "--forceall", "--cores", "1"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    for block in re.split(r"\n(?=rule \w+:)", out):
        if block.startswith(("rule train_model:", "rule extract_embeddings:")):
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


@pytest.mark.parametrize("stage", stages.STAGES, ids=lambda s: s.name)
def test_each_stage_depends_on_all_the_code_it_runs(stage):
    # A code file a stage runs but does not declare would change its outputs without either
    # front-end rerunning it, and the lineage would name code that did not make them.
    module, _ = ENTRY_POINTS[stage.name]
    runs = pipeline_imports(module)
    assert sorted(runs - set(stage.code)) == []
    assert set(stage.code) - runs <= set(stages._SHARED_CODE)  # no stale entries
