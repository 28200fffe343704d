"""Wall time of the test suite: pytest's own wall time, the 40 slowest tests and the time
spent per test file, read from pytest's JUnit XML (setup + call + teardown of each test),
each beside the CPU seconds it used with the subprocesses it waited for
(benchmarks/cpu_per_test.py).

Prints a table; it is a measurement, not a test (timings never gate the test suite).
Usage: python benchmarks/time_tests.py [--fast] [--write-doc] [-- PYTEST-ARGS...]
  --fast       time the fast tier (`make test-fast`: -m "not e2e") instead of the full suite
  --write-doc  put the table into docs/design.md (block measured:tests or measured:tests-fast)

With pytest-xdist (`-n 2`, the default of `make test`), a file's time is the sum of its
tests' times on both workers, so the file times add up to about twice the wall time. The CPU
seconds are a test's own whatever the other worker does: compare those between runs.

This machine's speed moves from day to day (docs/design.md, "Test times": the same tests have
cost a quarter more CPU seconds on one day than on another), so the table starts with a fixed
workload timed just before and just after the suite: `import torch` in a fresh interpreter,
the floor of every training and embedding job the suite starts. Compare two tables' walls
only at similar speeds.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLOWEST = 40


def run_pytest(extra: list[str], junit: Path) -> tuple[float, int]:
    """pytest's exit code and wall time; its output streams to this terminal."""
    cmd = [sys.executable, "-m", "pytest", "-q", f"--junitxml={junit}",
           "-o", "junit_duration_report=total", "-p", "cpu_per_test", *extra]
    # the plugin is found on the path by every worker (they inherit the environment)
    path = os.pathsep.join(filter(None, [str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH")]))
    start = time.perf_counter()
    code = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": path}).returncode
    return time.perf_counter() - start, code


def speed_probe(repeats: int = 5) -> float:
    """The least CPU seconds (user + sys) of `python -c "import torch"` over ``repeats``."""
    best = float("inf")
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        best = min(best, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return best


def read_cases(junit: Path) -> list[tuple[str, str, float, float, str, str]]:
    """(file, test name, seconds, CPU seconds, outcome, its message) of every test case in the
    report; the message is pytest's reason for a skip or failure, empty for a pass."""
    cases = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")
        file = "tests/" + (module[1] if module[:1] == ["tests"] else module[0]) + ".py"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome, message = child.tag, child.get("message", "")
        cpu = sum(float(p.get("value")) for p in case.iter("property") if p.get("name") == "cpu_s")
        cases.append((file, case.get("name", ""), float(case.get("time", 0.0)), cpu, outcome,
                      message))
    return cases


def table(wall: float, cases, label: str, probes: tuple[float, float]) -> str:
    out = io.StringIO()
    outcomes = defaultdict(int)
    for *_, outcome, _ in cases:
        outcomes[outcome] += 1
    counts = ", ".join(f"{n} {name}" for name, n in sorted(outcomes.items()))
    out.write(f"{label}: {len(cases)} tests ({counts}), pytest wall {wall:.1f} s, "
              f"{os.cpu_count()} cores\n")
    # A skip is this machine's, not the suite's (e.g. no Chromium, which `make test` installs
    # first and this script does not): the table says which tests and why.
    for file, name, _, _, outcome, message in cases:
        if outcome == "skipped":
            out.write(f"skipped: {file}::{name}: {message}\n")
    out.write(f"machine speed: `import torch` {probes[0]:.2f} CPU-s before the suite, "
              f"{probes[1]:.2f} after (least of 5)\n\n")
    out.write(f"CPU seconds of the tests and the subprocesses they waited for: "
              f"{sum(c[3] for c in cases):.0f}\n\n")
    per_file: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for file, _, seconds, cpu, *_ in cases:
        per_file[file].append((seconds, cpu))
    out.write(f"{'file':<36}{'tests':>6}{'seconds':>10}{'CPU-s':>8}\n")
    for file, times in sorted(per_file.items(), key=lambda kv: -sum(t for t, _ in kv[1])):
        wall, cpu = sum(t for t, _ in times), sum(c for _, c in times)
        out.write(f"{file:<36}{len(times):>6}{wall:>10.1f}{cpu:>8.1f}\n")
    out.write(f"\nslowest {SLOWEST} tests (setup + call + teardown), seconds and CPU-s:\n")
    for file, name, seconds, cpu, *_ in sorted(cases, key=lambda c: -c[2])[:SLOWEST]:
        out.write(f"{seconds:>8.1f} s {cpu:>7.1f}  {file}::{name}\n")
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="the fast tier (-m 'not e2e')")
    parser.add_argument("--write-doc", action="store_true",
                        help="write the table into docs/design.md")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args()
    extra = (["-m", "not e2e"] if args.fast else []) + args.pytest_args
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        before = speed_probe()
        wall, code = run_pytest(extra, junit)
        probes = (before, speed_probe())
        cases = read_cases(junit)
    label = "make test-fast" if args.fast else "make test"
    text = table(wall, cases, label, probes)
    print(text, end="")
    if args.write_doc:
        sys.path.insert(0, str(ROOT))
        from pipeline.report.results import write_measurement

        flags = " --fast" if args.fast else ""
        write_measurement(ROOT / "docs/design.md", "tests-fast" if args.fast else "tests",
                          f"python benchmarks/time_tests.py{flags} --write-doc", text)
    if code:
        raise SystemExit(f"pytest exited {code}: the table above is of a failing run")


if __name__ == "__main__":
    main()
