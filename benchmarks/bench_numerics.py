"""What the portable numerics cost: wall time of each per-run stage under several settings.

    python benchmarks/bench_numerics.py            # per-stage table (about 3 minutes here)
    python benchmarks/bench_numerics.py --repeat 3

Each stage runs through its real CLI (start-up included, as a Snakemake or DVC job pays it)
on the default digits params, for a supcon and a ce run, under:

- native: every library picks its fastest kernels (PIPELINE_NUMERICS=native);
- portable: the shipped setting (pipeline/infra/numerics.py: PyTorch AVX2 kernels, MKL COMPATIBLE);
- portable, ATen default: the same but PyTorch without vector kernels (portable too, slower);
- MKL AVX2 branch: PyTorch AVX2 kernels with MKL's AVX2 CNR branch - fast, but Intel
  documents it as reproducible on Intel CPUs only, so not portable across vendors.

The last two are set from outside in native mode (which leaves the environment alone).
Prints a table of seconds per stage and the ratio to native. A measurement, never a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.infra import numerics  # noqa: E402

PORTABLE = numerics.PORTABLE_ENVIRONMENT
SETTINGS = {
    "native": {numerics.MODE_VARIABLE: "native"},
    "portable (shipped)": {numerics.MODE_VARIABLE: "portable"},
    "portable, ATen default": {numerics.MODE_VARIABLE: "native", **PORTABLE,
                               "ATEN_CPU_CAPABILITY": "default"},
    "MKL AVX2 branch (Intel only)": {numerics.MODE_VARIABLE: "native", **PORTABLE,
                                     "MKL_CBWR": "AVX2,STRICT"},
}
RUN = ["--dataset", "digits", "--noise-fraction", "0.2", "--seed", "0"]


def stage_commands(d: Path, model: str) -> list[tuple[str, list[str]]]:
    full = [*RUN[:2], "--model", model, "--augmentation", "none", *RUN[2:]]
    return [
        ("noisy_labels", [*RUN, "--labels", d / "labels.parquet"]),
        ("train", [*full, "--labels", d / "labels.parquet", "--checkpoint", d / "m.pt",
                   "--train-log", d / "log.parquet"]),
        ("embed", [*full, "--labels", d / "labels.parquet", "--checkpoint", d / "m.pt",
                   "--embeddings", d / "emb.parquet", "--head", d / "head.parquet"]),
        ("geometry", [*full, "--embeddings", d / "emb.parquet", "--head", d / "head.parquet",
                      "--train-log", d / "log.parquet", "--metrics", d / "metrics.json",
                      "--cosines", d / "cosines.parquet"]),
    ]


def time_stages(env: dict[str, str], model: str) -> dict[str, float]:
    # Variables of the shipped portable set are cleared first, so each setting starts clean.
    base = {k: v for k, v in os.environ.items() if k not in PORTABLE and k != "ATEN_CPU_CAPABILITY"}
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stage, args in stage_commands(Path(tmp), model):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "pipeline", stage, "--params",
                            str(ROOT / "params.yaml"), *map(str, args)], cwd=ROOT,
                           env={**base, **env}, check=True, capture_output=True)
            times[stage] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (minimum kept)")
    parser.add_argument("--write-doc", action="store_true",
                        help="write the table into README.md (measured:numerics block)")
    args = parser.parse_args()
    results: dict[tuple[str, str], dict[str, float]] = {}
    for model in ("supcon", "ce"):
        for name, env in SETTINGS.items():
            runs = [time_stages(env, model) for _ in range(args.repeat)]
            results[(model, name)] = {s: min(r[s] for r in runs) for s in runs[0]}
    stages = list(next(iter(results.values())))
    lines = [f"{'model':<7} {'setting':<30}" + "".join(f"{s:>13}" for s in stages) + "  vs native"]
    for (model, name), times in results.items():
        native = sum(results[(model, "native")].values())
        lines.append(f"{model:<7} {name:<30}" + "".join(f"{times[s]:>12.2f}s" for s in stages)
                     + f"  {sum(times.values()) / native:>8.2f}x")
    lines.append(f"cpu: {numerics.cpu_model()}; repeat {args.repeat}; torch "
                 f"{numerics.record().get('torch')}; times include each job's start-up")
    print("\n".join(lines))
    if args.write_doc:
        from pipeline.report.results import write_measurement

        write_measurement(ROOT / "README.md", "numerics",
                          f"python benchmarks/bench_numerics.py --repeat {args.repeat} "
                          "--write-doc", "\n".join(lines))


if __name__ == "__main__":
    main()
