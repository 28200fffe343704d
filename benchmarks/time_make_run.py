"""Wall time of `make run` (and `make test`) from a fresh clone: install, then the pipeline on
the defaults, then the no-op rerun; and whether the run left `git status` clean.

Prints a table; it is a measurement, not a test (timings never gate the test suite).
Usage: python benchmarks/time_make_run.py [--repo PATH] [--keep] [--with-test] [--write-doc]
(--write-doc puts the table into docs/design.md's "measured times" block).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    """Seconds ``cmd`` took; its output goes to a log beside the clone, named on failure."""
    log = cwd.parent / f"{'-'.join(cmd)}.log"
    start = time.perf_counter()
    with open(log, "w") as out:
        result = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {result.returncode}); see {log}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--keep", action="store_true", help="keep the clone for inspection")
    parser.add_argument("--with-test", action="store_true", help="also time make test there")
    parser.add_argument("--write-doc", action="store_true",
                        help="write the table into docs/design.md (measured:make block)")
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
        status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, check=True,
                                capture_output=True, text=True).stdout.strip()
        rerun = timed(["make", "run"], clone, env)  # everything up to date: the fixed cost
        test = timed(["make", "test"], clone, env) if args.with_test else None
    except SystemExit:
        args.keep = True  # the failing step's log stays
        raise
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    out = io.StringIO()
    out.write(f"{'step':<34}{'wall time':>12}\n")
    out.write(f"{'make install (fresh venv)':<34}{install:>10.1f} s\n")
    out.write(f"{'make run after install':<34}{pipeline:>10.1f} s\n")
    out.write(f"{'make run from a fresh clone':<34}{install + pipeline:>10.1f} s\n")
    out.write(f"{'make run again (no-op)':<34}{rerun:>10.1f} s\n")
    if test is not None:
        out.write(f"{'make test after make run':<34}{test:>10.1f} s\n")
    out.write(f"git status after make run: {'clean' if not status else status}\n")
    out.write(f"cores: {os.cpu_count()}\n")
    print(out.getvalue(), end="")
    if args.write_doc:
        import sys

        sys.path.insert(0, str(args.repo))
        from pipeline.report.results import write_measurement

        flags = " --with-test" if args.with_test else ""
        write_measurement(args.repo / "docs/design.md", "make",
                          f"python benchmarks/time_make_run.py{flags} --write-doc",
                          out.getvalue())


if __name__ == "__main__":
    main()
