"""The DVC front-end: render dvc.yaml from the stage table, record Snakemake's results into
dvc.lock, and tell Snakemake about results ``dvc repro`` made.

dvc.yaml keeps DVC's own ``matrix`` templating over params.yaml, so ``dvc repro`` alone
follows any change of the grid; this module only spells the stage table in DVC's syntax.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline import stages

HEADER = (
    "# Generated from pipeline/stages.py by `python -m pipeline dvc-yaml`: edit that file,\n"
    "# then rerun the command (a test fails while this file is out of date).\n"
)


def _dvc(pattern: str) -> str:
    """``{wildcard}`` -> DVC's ``${item.wildcard}``."""
    return re.sub(r"{(\w+)}", r"${item.\1}", pattern)


def stage_entry(stage: stages.Stage) -> dict:
    values = {w: f"${{item.{w}}}" for w in stage.matrix}
    values |= {f"in.{n}": _dvc(stage.dep_path(n)) for n in stage.deps}
    values |= {f"out.{n}": _dvc(p) for n, p in stage.outs.items()}
    values["log"] = _dvc(stage.log)
    entry: dict = {}
    if stage.matrix:
        entry["matrix"] = {w: f"${{{stages.GRID_AXES[w]}}}" for w in stage.matrix}
    entry["cmd"] = stage.command(values)
    entry["deps"] = [*stage.code, *(_dvc(stage.dep_path(n)) for n in stage.deps)]
    entry["params"] = [_dvc(key) for key in stage.params]
    entry["outs"] = [_dvc(p) for n, p in stage.outs.items() if n not in stage.metrics]
    if stage.metrics:
        entry["metrics"] = [{_dvc(stage.outs[n]): {"cache": True}} for n in stage.metrics]
    return entry


def plot_entry(plot: stages.Plot) -> dict:
    """One top-level plot of dvc.yaml."""
    props = {key: getattr(plot, key) for key in ("template", "x", "title", "x_label", "y_label")}
    props["y"] = {path: column for path, column in plot.y}
    return {plot.name: props}


def render() -> str:
    doc = {
        "stages": {s.name: stage_entry(s) for s in stages.STAGES},
        "plots": [plot_entry(p) for p in stages.PLOTS],
    }
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=1000)


def write_dvc_yaml(path: Path, check: bool = False) -> int:
    text = render()
    if check:
        if not path.exists() or path.read_text() != text:
            print(f"{path} is out of date: run `python -m pipeline dvc-yaml`", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    return 0


def record() -> int:
    """Record every stage's current deps and outs into dvc.lock after a Snakemake run, so
    `dvc status` is clean and `dvc repro` a no-op. `--force`: Snakemake already ran the
    commands; DVC only hashes what they produced."""
    result = subprocess.run(["dvc", "commit", "--force", "--quiet"], check=False)
    if result.returncode != 0:
        print(
            "warning: `dvc commit` failed, so dvc.lock does not record this run (were all "
            "targets built? run plain `snakemake` or `dvc repro` for the full grid)",
            file=sys.stderr,
        )
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
