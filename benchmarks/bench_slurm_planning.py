"""Planning the paper preset for Slurm: how long `snakemake -n --workflow-profile
profiles/slurm --configfile presets/paper.yaml` takes (target <= 5 s) and how many Slurm jobs
it would submit, with the profile's job groups (labels and geometry batched) and without.

Runs on a temporary copy of the project (no cluster needed: a dry run submits nothing).
Slurm jobs are counted from the dry run's plan: each group job is one submission, each other
job but the local target rule `all` is one. Prints a table; not a test.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 3


def copy_project(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True)
    for name in files.stdout.splitlines():
        if (ROOT / name).is_file() and not name.startswith("tests/"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)


def plan(project: Path, profile: str) -> tuple[list[float], str]:
    cmd = [sys.executable, "-m", "snakemake", "-n", "--workflow-profile", profile,
           "--configfile", "presets/paper.yaml"]
    times, out = [], ""
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=project, capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - start)
        out = result.stdout + result.stderr
    return times, out


def slurm_jobs(out: str) -> tuple[int, int, dict[str, int]]:
    """(Slurm submissions, Snakemake jobs, group jobs per group) of a dry run's plan."""
    groups: dict[str, int] = {}
    for name in re.findall(r"Group job (\w+) \(", out):
        groups[name] = groups.get(name, 0) + 1
    # jobs outside any group are printed unindented; group members are indented
    ungrouped = [r for r in re.findall(r"^(?:local)?rule (\w+):", out, re.M) if r != "all"]
    total = int(re.search(r"^total\s+(\d+)", out, re.M).group(1))
    return len(ungrouped) + sum(groups.values()), total, groups


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        copy_project(project)
        profile = yaml.safe_load((project / "profiles/slurm/config.yaml").read_text())
        for key in ("groups", "group-components"):
            profile.pop(key)
        (project / "profiles/slurm-ungrouped").mkdir()
        (project / "profiles/slurm-ungrouped/config.yaml").write_text(yaml.safe_dump(profile))
        rows = []
        for label, name in (("profiles/slurm (groups)", "profiles/slurm"),
                            ("same, without groups", "profiles/slurm-ungrouped")):
            times, out = plan(project, name)
            submitted, jobs, groups = slurm_jobs(out)
            rows.append((label, min(times), statistics.median(times), jobs, submitted, groups))
    print(f"snakemake -n --workflow-profile <profile> --configfile presets/paper.yaml "
          f"({REPEATS} runs each)")
    print(f"{'profile':<26}{'min s':>7}{'median s':>10}{'jobs':>7}{'Slurm jobs':>12}  groups")
    for label, fastest, median, jobs, submitted, groups in rows:
        shown = ", ".join(f"{g} x{n}" for g, n in groups.items()) or "-"
        print(f"{label:<26}{fastest:>7.2f}{median:>10.2f}{jobs:>7}{submitted:>12}  {shown}")


if __name__ == "__main__":
    main()
