"""Wall time of `make run` from a fresh clone: install, then the pipeline on the defaults.

Prints a table; it is a measurement, not a test (timings never gate the test suite).
Usage: python benchmarks/time_make_run.py [--repo PATH] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--keep", action="store_true", help="keep the clone for inspection")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="supcon-bench-"))
    clone = workdir / "clone"
    subprocess.run(["git", "clone", "-q", str(args.repo), str(clone)], check=True)
    # A fresh remote too, so nothing of an earlier run is reused.
    env = {**os.environ, "DVC_REMOTE": str(workdir / "remote")}
    env.pop("VIRTUAL_ENV", None)
    try:
        install = timed(["make", "install"], clone, env)
        pipeline = timed(["make", "run"], clone, env)
        rerun = timed(["make", "run"], clone, env)  # everything up to date: the fixed cost
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'step':<34}{'wall time':>12}")
    print(f"{'make install (fresh venv)':<34}{install:>10.1f} s")
    print(f"{'make run after install':<34}{pipeline:>10.1f} s")
    print(f"{'make run from a fresh clone':<34}{install + pipeline:>10.1f} s")
    print(f"{'make run again (no-op)':<34}{rerun:>10.1f} s")
    print(f"cores: {os.cpu_count()}")


if __name__ == "__main__":
    main()
