"""The DVC front-end: render dvc.yaml from the stage table, record Snakemake's results into
dvc.lock, and tell Snakemake about results ``dvc repro`` made.

The runs are a union of products (``grid.run_sets``), which DVC's ``matrix`` (one product)
cannot spell, and a matrix per sub-grid would define a job twice where sub-grids overlap
(the noisy labels of noise 0 serve both of the paper's studies). So dvc.yaml lists each job
once, as ``stage_table.grid_jobs`` enumerates them, in a top-level ``vars`` dict per matrix that
each per-run stage iterates with DVC's ``foreach``. A dict's keys name the stages, and the
key is what the matrix used to make of the same job (``train@digits-supcon-none-0.0-0``):
the names in dvc.lock, and lineage through them, do not change.

The price: dvc.yaml follows params.yaml's grid, so after editing the grid run
``python -m pipeline dvc-yaml`` before ``dvc repro`` (a Snakemake run of params.yaml does it
in ``record``). The header holds the grid's digest; a stage run by DVC against a grid of
another digest stops, saying so (``pipeline.infra.config.check_dvc_yaml_grid``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.infra import stage_table
from pipeline.infra.config import GRID_DIGEST_LINE, digest, load_params

HEADER = (
    "# Generated from pipeline/infra/stage_table.py and the grid of params.yaml by\n"
    "# `python -m pipeline dvc-yaml`: edit those, then rerun the command (a test fails while\n"
    "# this is out of date).\n"
)


def _dvc(pattern: str) -> str:
    """``{wildcard}`` -> DVC's ``${item.wildcard}``."""
    return re.sub(r"{(\w+)}", r"${item.\1}", pattern)


def jobs_var(stage: stage_table.Stage) -> str:
    """The ``vars`` key of a matrix's jobs: named after the first stage with that matrix
    (embed and geometry iterate ``train_jobs``: one job per training run)."""
    first = next(s for s in stage_table.STAGES if s.matrix == stage.matrix)
    return f"{first.name}_jobs"


def job_lists(grid: dict) -> dict[str, dict[str, dict[str, str]]]:
    """Per matrix, DVC's name of each job (its values joined by "-", as DVC's matrix named
    them) -> its wildcard values."""
    lists: dict[str, dict[str, dict[str, str]]] = {}
    for stage in stage_table.STAGES:
        if stage.matrix and jobs_var(stage) not in lists:
            lists[jobs_var(stage)] = {
                "-".join(job.values()): job for job in stage_table.grid_jobs(stage, grid)
            }
    return lists


def stage_entry(stage: stage_table.Stage, grid: dict) -> dict:
    deps = stage.deps_for(grid)
    values = {w: f"${{item.{w}}}" for w in stage.matrix}
    values |= {f"in.{n}": _dvc(stage.dep_path(n)) for n in deps}
    values |= {f"out.{n}": _dvc(p) for n, p in stage.outs.items()}
    values["log"] = _dvc(stage.log)
    entry: dict = {}
    entry["cmd"] = stage.command(values)
    entry["deps"] = [*stage.code, *(_dvc(stage.dep_path(n)) for n in deps)]
    entry["params"] = [_dvc(key) for key in stage.params]
    entry["outs"] = [_dvc(p) for n, p in stage.outs.items() if n not in stage.metrics]
    if stage.metrics:
        entry["metrics"] = [{_dvc(stage.outs[n]): {"cache": True}} for n in stage.metrics]
    return {"foreach": f"${{{jobs_var(stage)}}}", "do": entry} if stage.matrix else entry


def plot_entry(plot: stage_table.Plot) -> dict:
    """One top-level plot of dvc.yaml."""
    props = {key: getattr(plot, key) for key in ("template", "x", "title", "x_label", "y_label")}
    props["y"] = {path: column for path, column in plot.y}
    return {plot.name: props}


def render(params_file: str | Path = stage_table.PARAMS_FILE) -> str:
    grid = load_params(params_file)["grid"]
    doc = {
        "stages": {s.name: stage_entry(s, grid) for s in stage_table.STAGES},
        "plots": [plot_entry(p) for p in stage_table.PLOTS],
    }
    # one line per job ({dataset: digits, noise: '0.0', seed: '0'}): 216 runs stay readable
    jobs = yaml.safe_dump({"vars": [job_lists(grid)]}, sort_keys=False, width=1000,
                          default_flow_style=None)
    stamp = f"{GRID_DIGEST_LINE}{digest(grid)}\n"
    return HEADER + stamp + jobs + yaml.safe_dump(doc, sort_keys=False, width=1000)


def stage_names(grid: dict) -> set[str]:
    """DVC's name of every stage dvc.yaml lists for ``grid`` (``train@digits-ce-none-0.0-0``)."""
    lists = job_lists(grid)
    names = set()
    for stage in stage_table.STAGES:
        if stage.matrix:
            names |= {f"{stage.name}@{key}" for key in lists[jobs_var(stage)]}
        else:
            names.add(stage.name)
    return names


def prune_lock(grid: dict, lock: Path = Path(stage_table.LOCK_FILE)) -> list[str]:
    """Drop the dvc.lock entries of stages dvc.yaml no longer lists for ``grid``; returns
    their names. DVC updates the entries of the stages it runs or commits and keeps every
    other one, so a run or noise fraction dropped from the grid would stay "recorded" with
    outputs no stage makes. Edited with DVC's own round-trip YAML, so the rest of the file
    keeps DVC's formatting."""
    from dvc.utils.serialize import modify_yaml

    if not lock.exists():
        return []
    wanted = stage_names(grid)
    with modify_yaml(lock) as data:
        stale = [name for name in data.get("stages", {}) if name not in wanted]
        for name in stale:
            del data["stages"][name]
    return stale


def write_dvc_yaml(path: Path, check: bool = False) -> int:
    """Render dvc.yaml for ./params.yaml, the file DVC reads (or check it is current), and
    drop the dvc.lock entries of stages it no longer lists."""
    text = render()
    if check:
        if not path.exists() or path.read_text() != text:
            print(f"{path} is out of date: run `python -m pipeline dvc-yaml`", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    stale = prune_lock(load_params(stage_table.PARAMS_FILE)["grid"], path.with_name("dvc.lock"))
    if stale:
        print(f"dvc.lock: dropped {len(stale)} entries of stages the grid no longer has "
              f"(e.g. {stale[0]})", file=sys.stderr)
    return 0


def record() -> int:
    """Record every stage's current deps and outs into dvc.lock after a Snakemake run, so
    `dvc status` is clean and `dvc repro` a no-op. `--force`: Snakemake already ran the
    commands; DVC only hashes what they produced. dvc.yaml is first re-rendered for
    params.yaml's grid, which the run just built (`dvc commit` hashes the jobs it lists)."""
    path = Path("dvc.yaml")
    before = path.read_text() if path.exists() else ""
    write_dvc_yaml(path)
    if path.read_text() != before:
        print(f"{path}: re-rendered for the grid of {stage_table.PARAMS_FILE}", file=sys.stderr)
    result = subprocess.run(["dvc", "commit", "--force"], check=False,
                            capture_output=True, text=True)
    if result.returncode == 0:
        return 0
    if "does not exist" in result.stderr:
        # A run of some targets (`snakemake <file>`) built them and left the rest of the grid
        # unbuilt: dvc.lock records whole grids only, so it does not record this run, and the
        # run itself succeeded.
        print("note: dvc.lock does not record this run: it built part of the grid "
              f"({result.stderr.strip().removeprefix('ERROR: ')}); run plain `snakemake` or "
              "`dvc repro` to build and record the full grid", file=sys.stderr)
        return 0
    print(f"`dvc commit` failed, so dvc.lock does not record this run:\n{result.stderr}",
          file=sys.stderr)
    return result.returncode


def sync_snakemake() -> int:
    """After ``dvc repro``, bring Snakemake's records up to date without rerunning anything.

    Snakemake keeps its own record of the params, code and inputs each output was made with;
    outputs DVC made after a params change still carry the old params there, so the next
    ``snakemake`` would redo every such job (same bytes, hours of GPU at paper scale).
    ``snakemake --touch`` replaces those records, but vouches for whatever is on disk, so it
    runs only when ``dvc status`` has just checked that every stage's outputs match the
    current params, code and inputs; otherwise nothing is touched and the exit status is 1.
    """
    status = subprocess.run(["dvc", "status", "--json"], capture_output=True, text=True)
    if status.returncode != 0:
        print(f"error: `dvc status` failed: {status.stderr.strip()}", file=sys.stderr)
        return 2
    stale = sorted(json.loads(status.stdout or "{}"))
    if stale:
        shown = ", ".join(stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
        print(
            f"error: DVC reports {len(stale)} stage(s) not up to date ({shown}): run "
            "`dvc repro` first. Snakemake's records are left as they are.",
            file=sys.stderr,
        )
        return 1
    command = [sys.executable, "-m", "snakemake", "--touch", "--cores", "1"]
    return subprocess.run(command, check=False).returncode
