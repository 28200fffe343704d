"""Wall time and peak memory of the geometry stage at paper scale (CIFAR-100 sized):
N = 50,000 training + 10,000 test embeddings, d = 512, K = 100, a ce head.

Synthetic embeddings (class means plus noise) are written once; the stage then runs in a
fresh process whose peak resident memory is read from the kernel (ru_maxrss). Prints a
table; targets on CPU: <= 10 s and <= 1 GB. A measurement, never a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.infra import io, schemas

STAGE = """
import sys
from pathlib import Path
from pipeline.infra.runs import Run
from pipeline.stages.geometry import measure_geometry
d = Path(sys.argv[1])
probe = {"inverse_regularisation": 1.0, "max_iterations": 1000}
measure_geometry({"geometry": {"fit_threshold": 1.0, "probe": probe}},
                 run=Run("synthetic", 1.0, "ce", "none", 0.1, 256, 3000, 0.0, 0),
                 embeddings=d / "emb.parquet",
                 head=d / "head.parquet", train_log=d / "log.parquet", metrics=d / "metrics.json",
                 cosines=d / "cosines.parquet")
"""


def write_inputs(d: Path, n_train: int, n_test: int, dim: int, k: int) -> None:
    rng = np.random.default_rng(0)
    means = rng.normal(size=(k, dim)).astype(np.float32)
    labels = np.concatenate([np.arange(n_train) % k, np.arange(n_test) % k]).astype(np.int64)
    z = means[labels] + 0.3 * rng.normal(size=(labels.size, dim)).astype(np.float32)
    n = labels.size
    table = pa.table(
        {
            "index": np.concatenate([np.arange(n_train), np.arange(n_test)]).astype(np.int64),
            "split": ["train"] * n_train + ["test"] * n_test,
            "clean_label": labels,
            "noisy_label": pa.array(labels, mask=np.arange(n) >= n_train, type=pa.int64()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1)), dim),
        },
        schema=schemas.embeddings(dim),
    )
    cfg = {"dataset": "synthetic", "augmentation": "none", "noise_fraction": 0.0, "seed": 0,
           "model": {"model": "ce", "num_classes": k, "representation_dim": dim}}
    io.write_parquet(table, d / "emb.parquet", metadata={"train_config": cfg})
    head = pa.table({"class": np.arange(k, dtype=np.int64),
                     "weight": pa.FixedSizeListArray.from_arrays(pa.array(means.reshape(-1)), dim)},
                    schema=schemas.head(dim))
    io.write_parquet(head, d / "head.parquet", metadata={"train_config": cfg})
    rows = [{"iteration": 500 * (i + 1), "learning_rate": 0.1, "loss": 1.0, "supcon_loss": 1.0,
             "train_accuracy_noisy": min(1.0, 0.2 * (i + 1)), "train_accuracy_clean": 1.0,
             "test_accuracy_class_mean": 1.0, "test_accuracy_head": 1.0} for i in range(8)]
    io.write_parquet(pa.Table.from_pylist(rows, schema=schemas.TRAIN_LOG), d / "log.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_inputs(d, args.train, args.test, args.dim, args.classes)
        size_mb = (d / "emb.parquet").stat().st_size / 2**20
        times, peaks = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", STAGE, str(d)], check=True)
            times.append(time.perf_counter() - start)
            # ru_maxrss of the largest child so far, in KiB on Linux
            peaks.append(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20)
        metrics = json.loads((d / "metrics.json").read_text())
    print(f"geometry stage, N = {args.train:,} train + {args.test:,} test, d = {args.dim}, "
          f"K = {args.classes}; embeddings file {size_mb:.0f} MiB; {args.repeats} runs")
    print(f"{'wall time (process incl. start-up)':<40}{min(times):>8.2f} s best, "
          f"{np.median(times):.2f} s median")
    print(f"{'peak resident memory':<40}{max(peaks):>8.2f} GiB")
    print(f"sanity: sample_cosine_mean {metrics['sample_cosine_mean']:.4f}, "
          f"test_accuracy_class_mean {metrics['test_accuracy_class_mean']:.4f}")


if __name__ == "__main__":
    main()
