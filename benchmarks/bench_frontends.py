"""How long the front-ends take to plan the `paper` preset (its run sets: 216 runs, 66 label
jobs): `snakemake -n` and `dvc status`, on a temporary copy of the project whose params.yaml
is the preset and whose dvc.yaml is rendered for it (`python -m pipeline dvc-yaml`, untimed:
done once per grid change). Prints a table; target <= 5 s each. Not a test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_slurm_planning import copy_project  # noqa: E402  (benchmarks/ is sys.path[0])

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, result.stdout


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        copy_project(project)
        shutil.copy2(ROOT / "presets/paper.yaml", project / "params.yaml")
        subprocess.run([sys.executable, "-m", "pipeline", "dvc-yaml"], cwd=project, check=True)
        bin_dir = Path(sys.executable).parent
        smk, out = timed([str(bin_dir / "snakemake"), "-n", "--cores", "4", "--quiet", "rules"],
                         project)
        jobs = [line.split()[-1] for line in out.splitlines() if line.startswith("total")]
        dvc, _ = timed([str(bin_dir / "dvc"), "status"], project)
        stages, _ = timed([str(bin_dir / "dvc"), "stage", "list"], project)
    print(f"paper preset grid: {jobs[0] if jobs else '?'} Snakemake jobs")
    print(f"{'command':<34}{'wall time':>10}")
    print(f"{'snakemake -n':<34}{smk:>8.2f} s")
    print(f"{'dvc status':<34}{dvc:>8.2f} s")
    print(f"{'dvc stage list':<34}{stages:>8.2f} s")


if __name__ == "__main__":
    main()
