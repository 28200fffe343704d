"""Thin command line over the stage functions: ``python -m pipeline <stage> ...``.

Options are derived from the stage table (pipeline.infra.stage_table), so the CLI, Snakemake and DVC
agree on every flag. Each stage function receives only the params keys its stage declares.
Stage modules are imported lazily: a geometry job should not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import logging
import sys
from pathlib import Path

from pipeline.infra import numerics, stage_table
from pipeline.infra.config import ParamsError, load_params, select
from pipeline.infra.io import output_locks
from pipeline.infra.runs import COLUMNS, Run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in stage_table.STAGES:
        p = sub.add_parser(stage.name, help=f"run stage {stage.name}")
        p.add_argument("--params", default=stage_table.PARAMS_FILE, help="params file")
        for w in stage.matrix:
            p.add_argument(f"--{w.replace('_', '-')}", dest=w, required=True,
                           type=stage_table.WILDCARD_TYPES[w])
        for name in [*stage.deps, *stage.outs]:  # a dep some grids do not need is optional
            p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=Path,
                           required=name not in stage.needed_when)
        p.add_argument("--log", type=Path, help="also write the log to this file")
    p = sub.add_parser(
        "results",
        help="render docs/results.md and README's results block from the run's outputs",
    )
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 naming any drift from the committed text or "
                   "dvc.lock")
    p.add_argument("--preset", type=Path, default=None,
                   help="the outputs are this preset's run: write docs/<preset>.md and its "
                   "README block instead")
    p = sub.add_parser("dvc-yaml", help="render dvc.yaml from pipeline/infra/stage_table.py")
    p.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml is out of date")
    p.add_argument("--output", type=Path, default=Path("dvc.yaml"))
    sub.add_parser("record", help="record finished outputs into dvc.lock (dvc commit)")
    sub.add_parser(
        "sync-snakemake",
        help="after `dvc repro`: mark Snakemake's jobs done (snakemake --touch), only if "
        "`dvc status` is clean",
    )
    p = sub.add_parser(
        "lineage",
        help="the chain of stages, params and code that made an artifact, back to the raw data",
        description="Trace an artifact (a file dvc.lock records, a file inside a recorded "
        "directory, a stage name, or a figure carrying a provenance record) upstream to the "
        "raw data. Exit status: 0 ok, 1 --verify found a problem, 2 cannot trace.",
    )
    p.add_argument("artifact", help="path of the artifact (from the current directory, else "
                   "from --repo), or a stage name of dvc.lock")
    p.add_argument("--verify", action="store_true",
                   help="re-hash every link; name each stale or tampered one (exit 1 if any)")
    p.add_argument("--json", action="store_true", help="print the lineage as JSON")
    p.add_argument("--repo", type=Path, default=Path("."), help="project root (default: .)")
    p = sub.add_parser(
        "audit",
        help="rerun everything upstream of an artifact in a clean clone; compare with dvc.lock",
        description="Rerun, in a temporary clone of HEAD, every stage upstream of an artifact "
        "(resolved as `lineage` does) and compare each output with dvc.lock. Exit status: 0 "
        "all reproduced, 1 a difference, 2 cannot trace, 3 refused: dirty git tree, 4 refused: "
        "stale dvc.lock, 5 the rerun failed.",
    )
    p.add_argument("artifact", help="path of the artifact, or a stage name of dvc.lock")
    p.add_argument("--jobs", type=int, default=1, help="cores for the rerun (snakemake --cores)")
    p.add_argument("--keep", action="store_true", help="keep the temporary clone afterwards")
    p.add_argument("--repo", type=Path, default=Path("."), help="project root (default: .)")
    return parser


def _setup_logging(log_file: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
        handlers=handlers, force=True,
    )


# pyarrow converts between its arrays and numpy or Python values through its pandas layer
# whenever pandas can be imported, so it imports pandas (0.3-0.4 s of a job's start-up, more than
# a labels job's work) even to read an int64 column. pandas is an optional dependency of
# pyarrow: the stages that never use it run as where it is not installed. Same bytes either way.
WITHOUT_PANDAS = frozenset(s.name for s in (
    stage_table.NOISY_LABELS, stage_table.TRAIN, stage_table.EMBED, stage_table.GEOMETRY,
    stage_table.FREE_FEATURES))


class _NoPandas(importlib.abc.MetaPathFinder):
    """`import pandas` raises ImportError, which pyarrow takes as "pandas not installed" (a
    None in sys.modules would not do: Cython's import returns it as the module)."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "pandas":
            raise ModuleNotFoundError(f"pandas is hidden from stage jobs that never use it "
                                      f"(pipeline/__main__.py, WITHOUT_PANDAS): {name}",
                                      name=name)
        return None


def run_stage(stage: stage_table.Stage, args: argparse.Namespace) -> object:
    if stage.name in WITHOUT_PANDAS and "pandas" not in sys.modules:
        sys.meta_path.insert(0, _NoPandas())
    params = load_params(args.params)
    wildcards = {w: getattr(args, w) for w in stage.matrix}
    keys = [key.format(**{w: str(v) for w, v in wildcards.items()}) for key in stage.params]
    fn = getattr(importlib.import_module(stage.module), stage.entry)
    files = {name: getattr(args, name) for name in [*stage.deps, *stage.outs]}
    # A per-run stage takes the run as one value; the others their wildcards by name.
    identity = {"run": Run.of(wildcards)} if set(stage.matrix) == set(COLUMNS) else wildcards
    with output_locks(getattr(args, name) for name in stage.outs):
        return fn(select(params, keys, args.params), **identity, **files)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "dvc-yaml":
        from pipeline.infra.frontends import write_dvc_yaml

        return write_dvc_yaml(args.output, check=args.check)
    if args.command == "results":
        from pipeline.report.results import main as results

        return results(Path("."), check=args.check, preset=args.preset)
    if args.command == "record":
        from pipeline.infra.frontends import record

        return record()
    if args.command == "sync-snakemake":
        from pipeline.infra.frontends import sync_snakemake

        return sync_snakemake()
    if args.command == "lineage":
        from pipeline.infra.lineage import main as lineage

        return lineage(args.artifact, args.repo, verify=args.verify, as_json=args.json)
    if args.command == "audit":
        from pipeline.infra.audit import audit

        return audit(args.artifact, args.repo, jobs=args.jobs, keep=args.keep)
    _setup_logging(args.log)
    log = logging.getLogger("pipeline")
    try:
        numerics.mode()  # an unknown PIPELINE_NUMERICS stops the job before it computes
        run_stage(stage_table.BY_NAME[args.command], args)
    except (ParamsError, ValueError, ArithmeticError, OSError) as e:
        # Expected failures (bad params, bad or missing input, divergence): one clear line
        # naming the value and its source, no traceback, exit status 1.
        log.error("%s failed: %s", args.command, e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
