"""What one job of each stage asks a cluster for: GPUs, CPUs, memory and wall time.

Snakemake passes these as rule resources (rules/common.smk, ``get_resources``); the Slurm
executor turns them into ``sbatch --gpus/--cpus-per-task/--mem/--time`` (profiles/slurm,
docs/slurm.md). A local run ignores them unless ``--resources`` caps one. They are sized
from the params each stage reads, so the paper preset asks for hours and the digits
default for minutes. Only the digits figures are measured (this repository's 2-core CPU);
the ResNet-18 step time is an estimate until a GPU run measures it (README, "Paper scale").
A request too small is not fatal: Slurm stops the job (TIMEOUT / OUT_OF_MEMORY), the
workflow reports it, and training resumes from its last resume point on the next run.
"""

from __future__ import annotations

import math

# Seconds per SGD step at batch 256, per encoder and device, before the safety margin.
SECONDS_PER_STEP = {
    "mlp": 0.005,  # measured: 3,000 steps + evaluations in ~13 s on one CPU core (digits)
    "resnet18": 0.03,  # estimate for one current GPU (bf16, channels_last); not measured
}
# An evaluation passes every training and test image forward once; a forward costs about
# a third of a forward+backward step.
FORWARD_SHARE = 1 / 3
# Training images + test images per dataset (digits: 1,797 split 70/30; mnist5k: 5,000).
IMAGES = {"digits": 1_797, "mnist5k": 5_000, "cifar10": 60_000, "cifar100": 60_000}
MARGIN = 2.0  # wall time asked for / wall time estimated: queues lose less than a TIMEOUT
# Views per sampled image of the multi-view models: their encoder sees that many inputs per
# image, so a step costs that many times as much. The same table as pipeline/maths/models.py's
# MULTIVIEW_MODELS (tests/test_multiview.py checks it), not imported from there: that would
# load torch into every Snakemake start, which reads this module.
VIEWS = {"supcon_mv": 2}
STARTUP_MINUTES = 3  # interpreter, torch and CUDA start; torch.compile adds COMPILE_MINUTES
COMPILE_MINUTES = 5

# Peak resident memory per job, MB, including the Snakemake job step around the command
# (~180 MB). mlp: measured 0.98 GB for a digits training run; resnet18: torch with CUDA
# libraries, the CIFAR archive unpickled (~1 GB) and torch.compile's worker processes.
MEMORY_MB = {"mlp": 2_000, "resnet18": 16_000}
CPUS = {"mlp": 1, "resnet18": 4}  # mlp trains single-threaded; resnet18: compile workers

# Stages without an encoder: CPU only, sized by their measured paper-scale cost (geometry:
# 2.3 s and 0.64 GiB for N = 60,000, d = 512, K = 100; free features: ~35 s on one core).
CPU_STAGES = {
    "noisy_labels": {"mem_mb": 1_000, "runtime": 5},
    "geometry": {"mem_mb": 2_000, "runtime": 5},
    "aggregate": {"mem_mb": 4_000, "runtime": 15},
    "figures": {"mem_mb": 4_000, "runtime": 15},
    "free_features": {"mem_mb": 2_000, "runtime": 15},
    "claims": {"mem_mb": 2_000, "runtime": 15},  # bootstrap fits over the grid's runs
}


def training_minutes(common: dict, iterations: int, datasets: list[str], views: int = 1,
                     batch_size: int = 256) -> int:
    """Wall time (minutes) to ask for one training run of ``train.common`` of ``iterations``
    steps that draw ``batch_size`` images and see ``views`` inputs per image."""
    encoder = common["encoder"]
    step = SECONDS_PER_STEP[encoder] * batch_size / 256
    images = max(IMAGES.get(d, IMAGES["cifar10"]) for d in datasets)
    evaluations = iterations / common["eval_every"]
    evaluation = images / batch_size * FORWARD_SHARE * step  # one view per image
    seconds = iterations * step * views + evaluations * evaluation
    startup = STARTUP_MINUTES + (COMPILE_MINUTES if common.get("compile") else 0)
    return math.ceil(MARGIN * seconds / 60) + startup


def job_resources(stage: str, params: dict) -> dict[str, int]:
    """Snakemake resources of one job of ``stage`` under validated ``params``."""
    if stage in CPU_STAGES:
        return {"cpus_per_task": 1, **CPU_STAGES[stage]}
    if stage not in ("train", "embed"):
        raise KeyError(f"no resources defined for stage {stage!r}")
    common = params["train"]["common"]
    encoder = common["encoder"]
    if encoder not in SECONDS_PER_STEP:
        raise KeyError(f"train.common.encoder: no resources defined for {encoder!r}")
    # embed: one forward pass over every image, minutes at most. One request for every run
    # of the stage: sized for the grid's dearest model, batch size and training length.
    grid = params["grid"]
    views = max(VIEWS.get(model, 1) for model in grid["models"])
    runtime = (training_minutes(common, max(grid["iterations"]), grid["datasets"], views,
                                max(grid["batch_sizes"]))
               if stage == "train" else 15)
    return {"gpu": 1, "cpus_per_task": CPUS[encoder], "mem_mb": MEMORY_MB[encoder],
            "runtime": runtime}
