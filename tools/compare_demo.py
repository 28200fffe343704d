"""The README's experiment comparison, generated: one `dvc exp run -S` on the default project
and what `dvc exp show --only-changed`, `dvc metrics diff` and `dvc params diff` then print.

Runs in a fresh clone of HEAD that shares this checkout's DVC cache, so the default run's
outputs (from `make run`) are checked out rather than recomputed and this working tree is left
alone; only the stages that read the changed param rerun. A demonstration, not a test
(tests/test_experiments.py asserts the same commands on the tiny project).

Usage: python tools/compare_demo.py [--set KEY=VALUE] [--write-doc]
--write-doc writes the printed block into README.md's ``<!-- measured:compare -->`` block.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from pipeline.report.results import write_measurement  # noqa: E402

# A change of measurement, not of any claim's criterion: the probe's regularisation reruns
# the 39 geometry stages and everything downstream of them, no training.
DEFAULT_SET = "geometry.probe.inverse_regularisation=0.1"


def run(*cmd: str, cwd: Path) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def demo(change: str) -> str:
    scratch = Path(tempfile.mkdtemp(prefix="compare-demo-"))
    try:
        repo = scratch / "repo"
        run("git", "clone", "-q", str(REPO), str(repo), cwd=scratch)
        run("dvc", "config", "--local", "cache.dir", str(REPO / ".dvc" / "cache"), cwd=repo)
        run("dvc", "checkout", "--quiet", cwd=repo)
        ran = run("dvc", "exp", "run", "-S", change, "-n", "demo", cwd=repo)
        stages = sorted({line.split("'")[1].split("@")[0] for line in ran.splitlines()
                         if line.startswith("Running stage '")})
        show = run("dvc", "exp", "show", "--only-changed", "--md", "--precision", "4", cwd=repo)
        columns = show.splitlines()[0].count("|") - 1
        metrics = run("dvc", "metrics", "diff", "--md", "--precision", "4", cwd=repo)
        params = run("dvc", "params", "diff", "--md", cwd=repo)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return "\n".join([
        f"$ dvc exp run -S {change} -n demo",
        f"  (stages rerun: {', '.join(stages)}; no training)",
        "",
        f"$ dvc exp show --only-changed --md --precision 4     # {columns} columns",
        show.rstrip(), "",
        "$ dvc metrics diff --md --precision 4",
        metrics.rstrip(), "",
        "$ dvc params diff --md",
        params.rstrip(),
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default=DEFAULT_SET, help=f"KEY=VALUE (default {DEFAULT_SET})")
    parser.add_argument("--write-doc", action="store_true")
    args = parser.parse_args()
    text = demo(args.set)
    print(text)
    if args.write_doc:
        command = "python tools/compare_demo.py --write-doc"
        write_measurement(REPO / "README.md", "compare", command, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
