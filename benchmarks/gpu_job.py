"""One pipeline stage run in this process, as `python -m pipeline ARGS` would run it, then one
JSON line with its wall time and the peak GPU memory it allocated (for benchmarks/gpu_checks.sh).

`python benchmarks/gpu_job.py train --params ... --dataset ...`. torch's caching allocator
counts the stage's own tensors only (torch.cuda.max_memory_allocated), not the CUDA context
(~0.5 GiB per process) that nvidia-smi would add, so "peak" is what k jobs on one device add
up to, plus k contexts. On the CPU it runs the stage and reports no GPU memory.
"""

from __future__ import annotations

import json
import sys
import time

import pipeline  # noqa: F401  first: portable numerics settings before numpy/torch load


def main(argv: list[str]) -> int:
    import torch

    from pipeline.__main__ import main as pipeline_main

    start = time.perf_counter()
    status = pipeline_main(argv)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    print(json.dumps({"stage": argv[0] if argv else None, "status": status,
                      "seconds": round(seconds, 3), "peak_gpu_mib": peak}), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
