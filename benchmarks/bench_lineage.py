"""What tracing costs: wall time of ``lineage`` and ``lineage --verify`` on a project's outputs.

    python benchmarks/bench_lineage.py                    # this project's data/ (after make run)
    python benchmarks/bench_lineage.py --repo PATH --repeat 5
    python benchmarks/bench_lineage.py --write-doc        # also the printout in docs/lineage.md

Times :func:`pipeline.infra.lineage.trace` in this process (the minimum of ``--repeat`` runs,
each from nothing cached, as one CLI call starts) and one CLI call of each, start-up (Python,
DVC's import) included. ``--write-doc`` writes the figure's lineage printout, abridged to the
first runs of each stage family, into the ``measured:lineage`` block of docs/lineage.md, so
the doc shows what the command prints rather than a copy typed by hand. It refuses unless
``--verify`` passes (a complete, up-to-date run). A measurement, never a test.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.infra import lineage  # noqa: E402

FIGURE = "data/figures/iterations_to_fit_digits.png"
DOC = ROOT / "docs/lineage.md"
RUNS_SHOWN = 2  # per stage family in the doc's printout
KEYWORDS = ("params ", "code ", "inputs ", "out ", "in ", "!! ")  # a family's own lines


def time_trace(repo: Path, artifact: str, verify: bool, repeat: int) -> tuple[float, object]:
    best, chain = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        chain = lineage.trace(artifact, repo, verify=verify)
        best = min(best, time.perf_counter() - start)
    return best, chain


def time_cli(repo: Path, artifact: str, *flags: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", "lineage", artifact, *flags], cwd=repo,
                   capture_output=True, check=False)
    return time.perf_counter() - start


def abridge(text: str, runs: int = RUNS_SHOWN) -> str:
    """The printout with the per-run lines of each stage family of several runs (a block
    headed ``<family>  x<n>``) cut to its first ``runs`` runs, the rest counted. A run is its
    labelled line and the lines under it."""
    lines, many, shown, cut = [], False, 0, 0
    for line in text.splitlines():
        if not line.startswith(" "):  # a family, "raw data", the title, the verify result
            if cut:
                lines.append(f"  ... {cut} more run(s)")
            many, shown, cut = re.fullmatch(r"\S+  x\d+", line) is not None, 0, 0
        elif many:
            starts_run = line[2:3] != " " and not line[2:].startswith(KEYWORDS)
            shown += starts_run
            if shown > runs:
                cut += starts_run
                continue
        lines.append(line)
    if cut:
        lines.append(f"  ... {cut} more run(s)")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="project root (default: this)")
    parser.add_argument("--artifact", default=FIGURE)
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing (minimum kept)")
    parser.add_argument("--write-doc", action="store_true",
                        help="write the lineage printout into docs/lineage.md")
    args = parser.parse_args()
    repo = args.repo.resolve()
    os.chdir(repo)  # the artifact's path is taken from there, as the CLI in the repo takes it
    plain, chain = time_trace(repo, args.artifact, False, args.repeat)
    verified, checked = time_trace(repo, args.artifact, True, args.repeat)
    cli_plain = time_cli(repo, args.artifact)
    cli_verify = time_cli(repo, args.artifact, "--verify")
    print(f"lineage of {args.artifact} in {repo}: {len(chain.links)} stages, "
          f"{checked.hashed_files} files re-hashed, {len(checked.problems)} problem(s)")
    print(f"  trace            {plain:6.2f} s   (CLI, start-up included: {cli_plain:6.2f} s)")
    print(f"  trace --verify   {verified:6.2f} s   (CLI, start-up included: {cli_verify:6.2f} s)")
    if args.write_doc:
        from pipeline.report.results import write_measurement

        if checked.problems:
            sys.exit(f"--write-doc: lineage --verify finds {len(checked.problems)} problem(s) "
                     "in this project: write the doc from a complete, up-to-date run")
        full = lineage.render_text(chain)
        verified_line = lineage.render_text(checked).rstrip().splitlines()[-1]
        text = (f"{abridge(full)}[abridged to {RUNS_SHOWN} runs per stage family: the full "
                f"printout is {len(full.splitlines())} lines]\n\n"
                f"and with --verify:\n{verified_line}\n")
        write_measurement(DOC, "lineage", f"python -m pipeline lineage {args.artifact}", text)
        print(f"wrote the printout into {DOC}")

if __name__ == "__main__":
    main()
