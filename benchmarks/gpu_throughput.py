"""Training throughput with k jobs sharing one device, and what it implies for the paper's
protocol; the Python half of sections 6-8 of benchmarks/gpu_checks.sh. Not a test.

  python benchmarks/gpu_throughput.py concurrency --params P --labels L --out M.json [--jobs 1 2 4]
      k real `python -m pipeline train` jobs at once (benchmarks/gpu_job.py, so each reports
      its peak GPU memory) with PIPELINE_SLOTS_PER_DEVICE=k, for two step counts; the
      difference cancels start-up (imports, data to the device, first-step kernels), so
      images/s is the steady rate. Prints a table, writes the measurements to M.json.
  python benchmarks/gpu_throughput.py estimate --measurements M.json --run R.json ...
      the wall time of one paper run and of the 216-run protocol on 1 and on 4 GPUs, from the
      steady rates above and the evaluation cost of the 2,000-step run R.json.

Runs on the CPU too (PIPELINE_DEVICE=cpu, a small params file): that is how it was checked
without a GPU. Numbers are only meaningful on the device the paper runs would use.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent

# The paper's protocol (presets/paper.yaml; tests/test_presets.py checks it)
PAPER_ITERATIONS = 100_000
PAPER_BATCH = 256
PAPER_EVAL_EVERY = 500
PAPER_RUNS = 216
PAPER_IMAGES = 60_000  # CIFAR: 50,000 train + 10,000 test images, all evaluated each time


@dataclass(frozen=True)
class Concurrency:
    """k jobs at once: wall seconds of the whole batch for the short and the long run."""

    jobs: int
    short_steps: int
    long_steps: int
    short_s: float
    long_s: float
    batch: int
    peak_gpu_mib: float | None  # the largest of the k jobs'

    @property
    def aggregate_images_per_s(self) -> float:
        return self.jobs * (self.long_steps - self.short_steps) * self.batch / (
            self.long_s - self.short_s)

    @property
    def seconds_per_step(self) -> float:
        """Per job, with k-1 others on the device."""
        return (self.long_s - self.short_s) / (self.long_steps - self.short_steps)


def write_params(params: Path, steps: int, out: Path) -> None:
    p = yaml.safe_load(params.read_text())
    # one evaluation at the end only: the short/long difference is then pure SGD steps
    p["train"]["common"].update(iterations=steps, eval_every=steps)
    out.write_text(yaml.safe_dump(p, sort_keys=False))


def run_jobs(k: int, params: Path, labels: Path, work: Path, model: str) -> tuple[float, list]:
    """k training jobs at once through the CLI; (wall seconds, each job's JSON report)."""
    p = yaml.safe_load(params.read_text())
    dataset = p["grid"]["datasets"][0]
    augmentation = p["grid"]["augmentations"][0]
    env = {**os.environ, "PIPELINE_SLOTS_PER_DEVICE": str(k),
           "PIPELINE_LOCK_DIR": str(work / f"locks-{k}")}
    procs = []
    start = time.perf_counter()
    for i in range(k):
        cmd = [sys.executable, str(HERE / "gpu_job.py"), "train", "--params", str(params),
               "--dataset", dataset, "--model", model, "--augmentation", augmentation,
               "--noise-fraction", "0.0", "--seed", str(i), "--labels", str(labels),
               "--checkpoint", str(work / f"k{k}-{i}.pt"),
               "--train-log", str(work / f"k{k}-{i}-log.parquet")]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    reports = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"a training job of k={k} failed (exit {proc.returncode})")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return time.perf_counter() - start, reports


def concurrency(args) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    batch = yaml.safe_load(Path(args.params).read_text())["train"]["common"]["batch_size"]
    rows = []
    for k in args.jobs:
        walls, peaks = {}, []
        for steps in (args.short, args.long):
            params = work / f"params-{steps}.yaml"
            write_params(Path(args.params), steps, params)
            walls[steps], reports = run_jobs(k, params, Path(args.labels), work, args.model)
            peaks += [r["peak_gpu_mib"] for r in reports if r["peak_gpu_mib"] is not None]
        rows.append(Concurrency(k, args.short, args.long, walls[args.short], walls[args.long],
                                batch, max(peaks) if peaks else None))
    print(f"{args.model}, batch {batch}, {args.short} vs {args.long} steps per job "
          "(difference: steady state, start-up cancelled)")
    print(f"{'jobs/device':>11}{'images/s total':>16}{'per job':>9}{'s/step/job':>12}"
          f"{'peak GPU MiB/job':>18}")
    for r in rows:
        peak = f"{r.peak_gpu_mib:.0f}" if r.peak_gpu_mib is not None else "n/a (cpu)"
        print(f"{r.jobs:>11}{r.aggregate_images_per_s:>16.0f}"
              f"{r.aggregate_images_per_s / r.jobs:>9.0f}{r.seconds_per_step:>12.4f}{peak:>18}")
    Path(args.out).write_text(json.dumps([r.__dict__ for r in rows], indent=1))


def paper_run_seconds(step_s: float, eval_s_per_image: float, startup_s: float) -> float:
    """One paper run: its SGD steps, its 200 evaluations over all 60,000 images, start-up."""
    evaluations = PAPER_ITERATIONS // PAPER_EVAL_EVERY
    return (PAPER_ITERATIONS * step_s + evaluations * PAPER_IMAGES * eval_s_per_image
            + startup_s)


def protocol_seconds(run_s: float, gpus: int, jobs_per_gpu: int) -> float:
    """216 runs in waves of gpus x jobs_per_gpu (each job takes run_s at that concurrency)."""
    return math.ceil(PAPER_RUNS / (gpus * jobs_per_gpu)) * run_s


def estimate(args) -> None:
    rows = [Concurrency(**r) for r in json.loads(Path(args.measurements).read_text())]
    run = json.loads(Path(args.run).read_text())  # the 2,000-step CLI run's report
    alone = next(r for r in rows if r.jobs == 1)
    # the real run's wall = start-up + its steps + its evaluations; start-up as measured for
    # the short run alone (its steps at the steady rate taken off)
    startup = alone.short_s - alone.short_steps * alone.seconds_per_step
    evals = args.run_steps // args.run_eval_every
    eval_s = max(run["seconds"] - startup - args.run_steps * alone.seconds_per_step, 0.0)
    eval_s_per_image = eval_s / max(evals, 1) / args.run_images
    scale = PAPER_BATCH / alone.batch  # steps of another batch size scale with the images
    print(f"start-up {startup:.1f} s; evaluation {eval_s_per_image * 1e6:.2f} us per image "
          f"(from the {args.run_steps}-step run: {run['seconds']:.1f} s, {evals} evaluations "
          f"of {args.run_images} images)")
    print(f"{'setting':<44}{'per run':>10}{'216 runs':>12}")
    for r in rows:
        run_s = paper_run_seconds(r.seconds_per_step * scale, eval_s_per_image * r.jobs, startup)
        for gpus in (1, 4):
            label = f"{gpus} GPU(s) x {r.jobs} job(s) each"
            print(f"{label:<44}{run_s / 3600:>8.2f} h"
                  f"{protocol_seconds(run_s, gpus, r.jobs) / 3600:>10.1f} h")
    print("(evaluation time per image is assumed to grow k-fold with k jobs sharing a device)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("concurrency")
    c.add_argument("--params", required=True)
    c.add_argument("--labels", required=True)
    c.add_argument("--work", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--model", default="supcon")
    c.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4])
    c.add_argument("--short", type=int, default=100)
    c.add_argument("--long", type=int, default=400)
    e = sub.add_parser("estimate")
    e.add_argument("--measurements", required=True)
    e.add_argument("--run", required=True, help="JSON report of the long CLI run (gpu_job.py)")
    e.add_argument("--run-steps", type=int, required=True)
    e.add_argument("--run-eval-every", type=int, required=True)
    e.add_argument("--run-images", type=int, required=True, help="train + test images")
    args = parser.parse_args()
    concurrency(args) if args.command == "concurrency" else estimate(args)


if __name__ == "__main__":
    main()
