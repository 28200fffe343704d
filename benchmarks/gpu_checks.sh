#!/usr/bin/env bash
# Every GPU check of this project in one prepared run (for a lent GPU machine); prints its
# numbers. Run from the repository root: bash benchmarks/gpu_checks.sh
# Needs python3 with torch/torchvision/pyarrow/pandas/yaml/tqdm; jsonschema and its
# dependencies may be given as wheels in .whl/ (installed to /tmp/site, no network).
set -uo pipefail
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
echo "== versions this ran with"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'PY'
import platform, subprocess
import numpy, torch, torchvision
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True)
print("commit", commit.stdout.strip() or "unknown", "(uncommitted changes)" if dirty.stdout else "")
print("python", platform.python_version(), "numpy", numpy.__version__, "torch", torch.__version__,
      "torchvision", torchvision.__version__)
print("CUDA (torch built with)", torch.version.cuda, "cuDNN", torch.backends.cudnn.version(),
      "GPUs visible", torch.cuda.device_count(),
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
PY

echo "== 1. CUDA agrees with the CPU"
python3 - <<'PY'
import numpy as np, torch
from pipeline.maths.losses import supcon_loss
from pipeline.maths.batches import random_crop_flip
g = np.random.default_rng(0)
z = torch.nn.functional.normalize(torch.tensor(g.normal(size=(256, 512))), dim=1)
y = torch.tensor(g.integers(0, 10, 256))
cpu = supcon_loss(z, y, 0.1).item()
gpu = supcon_loss(z.float().cuda(), y.cuda(), 0.1).item()
print(f"supcon loss cpu float64 {cpu:.7f} cuda float32 {gpu:.7f} |diff| {abs(cpu - gpu):.1e}")
x = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8)
a = random_crop_flip(x, torch.Generator().manual_seed(1))
b = random_crop_flip(x.cuda(), torch.Generator().manual_seed(1)).cpu()
print("augmentation identical on cuda and cpu:", torch.equal(a, b))
PY

echo "== 2. training throughput, ResNet-18, batch 256 (ce, with torch.compile)"
python3 benchmarks/bench_training.py --model ce --compile --steps 100 --warmup 15 --workers 12
echo "== 2b. same for supcon (no compile)"
python3 benchmarks/bench_training.py --model supcon --steps 100 --warmup 15 --workers 12

echo "== 3. the real stages on CUDA: two training jobs on one GPU must take turns"
work=$(mktemp -d)
python3 - "$work" <<'PY'
import sys, yaml
sys.path.insert(0, "tests")
from pathlib import Path
from tiny_cifar import write_tiny_cifar
work = Path(sys.argv[1])
md5 = write_tiny_cifar(work / "cifar-10-python.tar.gz", "cifar10", per_batch=2000)
p = yaml.safe_load(open("params.yaml"))
p["grid"].update(datasets=["cifar10"], models=["supcon", "ce"], noise_fractions=[0.0], seeds=[0])
p["datasets"] = {"cifar10": {"archive": str(work / "cifar-10-python.tar.gz"), "md5": md5}}
p["grid"]["augmentations"] = ["standard"]
p["train"]["common"].update(encoder="resnet18", representation_dim=512, iterations=300,
                            eval_every=100)
yaml.safe_dump(p, open(work / "params.yaml", "w"))
PY
export PIPELINE_DEVICE=cuda PIPELINE_LOCK_DIR=$work/locks
run() { python3 -m pipeline "$@" --params "$work/params.yaml"; }
run noisy_labels --dataset cifar10 --noise-fraction 0.0 --seed 0 --labels $work/labels.parquet
start=$(date +%s%N)
for m in supcon ce; do
  run train --dataset cifar10 --model $m --augmentation standard --noise-fraction 0.0 --seed 0 --labels $work/labels.parquet \
    --checkpoint $work/$m.pt --train-log $work/$m-log.parquet --log $work/$m-train.log &
done
wait
echo "two 300-step runs through one GPU slot: $(( ($(date +%s%N) - start) / 1000000 )) ms"
grep -h -E "busy|using GPU|done" $work/*-train.log
for m in supcon ce; do
  run embed --dataset cifar10 --model $m --augmentation standard --noise-fraction 0.0 --seed 0 --labels $work/labels.parquet \
    --checkpoint $work/$m.pt --embeddings $work/$m-emb.parquet --head $work/$m-head.parquet
  run geometry --dataset cifar10 --model $m --augmentation standard --noise-fraction 0.0 --seed 0 --embeddings $work/$m-emb.parquet \
    --head $work/$m-head.parquet --train-log $work/$m-log.parquet --metrics $work/$m.json \
    --cosines $work/$m-cos.parquet
  python3 -c "import json; m = json.load(open('$work/$m.json')); print('$m', {k: m[k] for k in ('train_accuracy_noisy', 'class_mean_cosine_mean', 'sample_cosine_mean', 'iterations_to_fit')})"
done
echo "== 4. geometry stage at paper scale"
python3 benchmarks/bench_geometry.py --repeats 2

echo "== 5. CUDA determinism: the same 300-step run twice, with and without train.common.deterministic"
for det in true false; do
  python3 - "$work" "$det" <<'PY'
import sys, yaml
work, det = sys.argv[1], sys.argv[2] == "true"
p = yaml.safe_load(open(f"{work}/params.yaml"))
p["train"]["common"]["deterministic"] = det
yaml.safe_dump(p, open(f"{work}/params-det-{sys.argv[2]}.yaml", "w"))
PY
  for rep in 1 2; do
    for m in supcon ce; do
      start=$(date +%s%N)
      python3 -m pipeline train --params "$work/params-det-$det.yaml" --dataset cifar10 --model $m \
        --augmentation standard --noise-fraction 0.0 --seed 0 --labels $work/labels.parquet \
        --checkpoint $work/det-$det-$rep-$m.pt --train-log $work/det-$det-$rep-$m-log.parquet 2>/dev/null
      echo "deterministic=$det run $rep $m: $(( ($(date +%s%N) - start) / 1000000 )) ms, checkpoint md5 $(md5sum < $work/det-$det-$rep-$m.pt | cut -c1-12), log md5 $(md5sum < $work/det-$det-$rep-$m-log.parquet | cut -c1-12)"
    done
  done
done

echo "== 6. k concurrent training jobs on one device (PIPELINE_SLOTS_PER_DEVICE=k): images/s, peak memory"
# supcon, ResNet-18, batch 256, standard augmentation, no torch.compile (compile's minutes of
# start-up per job would swamp 400 steps); 100 vs 400 steps per job, so start-up cancels
python3 benchmarks/gpu_throughput.py concurrency --params "$work/params.yaml" \
  --labels "$work/labels.parquet" --work "$work/concurrency" --out "$work/concurrency.json" \
  --model supcon --jobs 1 2 4 --short 100 --long 400

echo "== 7. a real 2,000-step training run through the CLI (bf16 autocast on CUDA), then embed and geometry"
python3 - "$work" <<'PY'
import sys, yaml
work = sys.argv[1]
p = yaml.safe_load(open(f"{work}/params.yaml"))
p["train"]["common"].update(iterations=2000, eval_every=500)
yaml.safe_dump(p, open(f"{work}/params-2000.yaml", "w"))
PY
long=(--params "$work/params-2000.yaml" --dataset cifar10 --model supcon --augmentation standard
      --noise-fraction 0.0 --seed 0 --labels "$work/labels.parquet")
python3 benchmarks/gpu_job.py train "${long[@]}" --checkpoint "$work/long.pt" \
  --train-log "$work/long-log.parquet" --log "$work/long-train.log" | tee "$work/long.json"
python3 -m pipeline embed "${long[@]}" --checkpoint "$work/long.pt" \
  --embeddings "$work/long-emb.parquet" --head "$work/long-head.parquet"
python3 -m pipeline geometry --params "$work/params-2000.yaml" --dataset cifar10 --model supcon \
  --augmentation standard --noise-fraction 0.0 --seed 0 --embeddings "$work/long-emb.parquet" \
  --head "$work/long-head.parquet" --train-log "$work/long-log.parquet" \
  --metrics "$work/long-metrics.json" --cosines "$work/long-cos.parquet"
python3 - "$work" <<'PY'
import json, math, sys
import pyarrow.parquet as pq
work = sys.argv[1]
log = pq.read_table(f"{work}/long-log.parquet").to_pandas()
metrics = json.load(open(f"{work}/long-metrics.json"))
print(f"train log: {len(log)} rows, iterations {int(log['iteration'].min())}-{int(log['iteration'].max())}")
print(log[["iteration", "loss", "train_accuracy_noisy", "test_accuracy_class_mean"]].to_string(index=False))
finite = all(math.isfinite(v) for v in log["loss"])
print("loss finite at every evaluation:", finite, "| numerics:", metrics.get("numerics"))
print("metrics.json:", len(metrics), "keys;", {k: metrics[k] for k in
      ("train_accuracy_noisy", "class_mean_cosine_mean", "sample_cosine_mean") if k in metrics})
if not finite:
    sys.exit("FAILED: a non-finite training loss on the bf16 path")
PY
grep -h -E "using GPU|iterations|done" "$work/long-train.log" | head -5

echo "== 8. estimated wall time: one paper run (100,000 steps, 200 evaluations) and the 216 runs"
# tiny_cifar with per_batch=2000: 10,000 training + 2,000 test images were evaluated
python3 benchmarks/gpu_throughput.py estimate --measurements "$work/concurrency.json" \
  --run "$work/long.json" --run-steps 2000 --run-eval-every 500 --run-images 12000
