"""Wall and CPU time of each beyond-the-paper preset (presets/temperature.yaml, batch_size.yaml,
imbalance.yaml) from an empty data/, and the numbers its run gives: the extension's rows of the
claims table (stage claims, rows T, B and R) and the figure it draws; and of the CPU claims
study (presets/claims_cpu.yaml, issue 22): its time and every claims row.

Each preset runs in a fresh clone of the repository's HEAD (so nothing of an earlier run is
reused and the working tree's data/ is left alone) with this checkout's virtual environment:
``snakemake --cores N --configfile presets/<name>.yaml``. A measurement, not a test.

Usage: python benchmarks/time_presets.py [NAME ...] [--cores N] [--keep] [--write-doc]
--write-doc writes the measured time into each preset's "# Measured by" header line and the
printed block into README.md's ``<!-- measured:preset-<name> -->`` block, so the README's
numbers of each extension come from this command, never typed. For claims_cpu the block goes
to docs/design.md, and the clone's ``python -m pipeline results --preset
presets/claims_cpu.yaml`` output (docs/claims_cpu.md and the claims_cpu blocks of README.md and
docs/paper.md) is copied into this checkout.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESETS = ("temperature", "batch_size", "imbalance", "claims_cpu")
CLAIM_IDS = {"temperature": "T", "batch_size": "B", "imbalance": "R", "claims_cpu": None}
DOC_OF = {"claims_cpu": "docs/design.md"}  # where a preset's block goes (else README.md)
MEASURED_LINE = re.compile(r"^# Measured by `python benchmarks/time_presets.py --write-doc`:.*$",
                           re.MULTILINE)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_preset(name: str, workdir: Path, cores: int) -> dict:
    """Clone, run the preset, return its times and the clone's path."""
    clone = workdir / name
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    venv = REPO / ".venv" / "bin"
    env = {**os.environ, "PATH": f"{venv}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("VIRTUAL_ENV", None)
    log = workdir / f"{name}.log"
    cmd = [str(venv / "python"), "-m", "snakemake", "--cores", str(cores),
           "--configfile", f"presets/{name}.yaml"]
    cpu, start = children_cpu(), time.perf_counter()
    with open(log, "w") as out:
        result = subprocess.run(cmd, cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall, cpu = time.perf_counter() - start, children_cpu() - cpu
    if result.returncode:
        raise SystemExit(f"preset {name}: snakemake failed (exit {result.returncode}); see {log}")
    return {"clone": clone, "wall": wall, "cpu": cpu}


def report(name: str, measured: dict, cores: int) -> str:
    """The printed block of one preset: time, then its claims rows and figure, read back from
    the run's outputs."""
    import pandas as pd

    sys.path.insert(0, str(REPO))
    from pipeline.infra import stage_table
    from pipeline.infra.config import load_params
    from pipeline.infra.numerics import cpu_model
    from pipeline.report.results import claims_in_words

    clone = measured["clone"]
    runs = len(stage_table.grid_jobs(stage_table.TRAIN,
                                     load_params(clone / "presets" / f"{name}.yaml")["grid"]))
    claims = pd.read_csv(clone / stage_table.CLAIMS_CSV)
    rows = claims if CLAIM_IDS[name] is None else claims[claims["claim"] == CLAIM_IDS[name]]
    figures = sorted(p.name for p in (clone / stage_table.FIGURES_DIR).glob(f"{name}_*.png"))
    out = io.StringIO()
    minutes, seconds = divmod(round(measured["wall"]), 60)
    out.write(f"presets/{name}.yaml: {runs} training runs, {minutes} min {seconds} s wall, "
              f"{measured['cpu']:.0f} CPU-s, snakemake --cores {cores}, from an empty data/\n")
    out.write(f"machine: {os.cpu_count()} cores, {cpu_model() or platform.machine()}\n")
    if figures:
        out.write(f"figure: {', '.join(f'{stage_table.FIGURES_DIR}/{f}' for f in figures)}\n")
    out.write(f"claims rows {CLAIM_IDS[name] or 'all'} ({stage_table.CLAIMS_CSV}):\n")
    for r in rows.itertuples():
        interval = ("" if pd.isna(r.ci_low) else f" [{r.ci_low:.3g}, {r.ci_high:.3g}]")
        value = "—" if pd.isna(r.value) else f"{r.value:.3g}"
        where = r.setting if CLAIM_IDS[name] else f"{r.claim} {r.dataset} {r.setting}"
        out.write(f"  {r.model:<9} {where:<14} {r.measure}: {value}{interval} "
                  f"(criterion {r.criterion}): {r.verdict}\n")
    out.write("in words (pipeline/report/results.py claims_in_words):\n")
    out.write(claims_in_words(rows) + "\n")
    return out.getvalue()


def copy_generated_results(name: str, clone: Path) -> None:
    """Run ``results --preset`` in the clone and bring its doc and its blocks (README's, and
    the paper notes' where they hold one) here."""
    sys.path.insert(0, str(REPO))
    from pipeline.report.results import _with_block, preset_block_docs, preset_doc, preset_markers

    preset = Path("presets") / f"{name}.yaml"
    subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "pipeline", "results",
                    "--preset", str(preset)], cwd=clone, check=True)
    shutil.copy(clone / preset_doc(preset), REPO / preset_doc(preset))
    begin, end = preset_markers(preset)
    for doc in preset_block_docs(clone, preset):
        block = (clone / doc).read_text().split(begin, 1)[1].split(end, 1)[0]
        here = REPO / doc
        here.write_text(_with_block(here.read_text(), begin + block + end, begin, end, doc))


def write_preset_line(name: str, measured: dict, cores: int) -> None:
    path = REPO / "presets" / f"{name}.yaml"
    minutes, seconds = divmod(round(measured["wall"]), 60)
    line = (f"# Measured by `python benchmarks/time_presets.py --write-doc`: {minutes} min "
            f"{seconds} s wall, {measured['cpu']:.0f} CPU-s with --cores {cores} "
            f"({os.cpu_count()}-core {platform.machine()}), from an empty data/.")
    text = path.read_text()
    if not MEASURED_LINE.search(text):
        raise SystemExit(f"{path}: no '# Measured by' line to fill")
    path.write_text(MEASURED_LINE.sub(line, text, count=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"of {PRESETS} (default: all)")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--keep", action="store_true", help="keep the clones for inspection")
    parser.add_argument("--write-doc", action="store_true",
                        help="write the times into the presets and the blocks into README.md")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(PRESETS))
    if unknown:
        parser.error(f"unknown preset(s) {unknown} (known: {', '.join(PRESETS)})")
    args.names = args.names or list(PRESETS)
    workdir = Path(tempfile.mkdtemp(prefix="supcon-presets-"))
    try:
        for name in args.names:
            measured = run_preset(name, workdir, args.cores)
            text = report(name, measured, args.cores)
            print(text, end="", flush=True)
            if args.write_doc:
                from pipeline.report.results import write_measurement

                write_preset_line(name, measured, args.cores)
                write_measurement(REPO / DOC_OF.get(name, "README.md"), f"preset-{name}",
                                  f"python benchmarks/time_presets.py {name} --write-doc", text)
                if CLAIM_IDS[name] is None:
                    copy_generated_results(name, measured["clone"])
    except SystemExit:
        args.keep = True  # the failing preset's log and clone stay
        print(f"kept {workdir}", file=sys.stderr)
        raise
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
