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
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"

echo "== 1. CUDA agrees with the CPU"
python3 - <<'PY'
import numpy as np, torch
from pipeline.losses import supcon_loss
from pipeline.batches import random_crop_flip
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
run noisy_labels --dataset cifar10 --noise 0.0 --seed 0 --labels $work/labels.parquet
start=$(date +%s%N)
for m in supcon ce; do
  run train --dataset cifar10 --model $m --augmentation standard --noise 0.0 --seed 0 --labels $work/labels.parquet \
    --checkpoint $work/$m.pt --train-log $work/$m-log.parquet --log $work/$m-train.log &
done
wait
echo "two 300-step runs through one GPU slot: $(( ($(date +%s%N) - start) / 1000000 )) ms"
grep -h -E "busy|using GPU|done" $work/*-train.log
for m in supcon ce; do
  run embed --dataset cifar10 --model $m --augmentation standard --noise 0.0 --seed 0 --labels $work/labels.parquet \
    --checkpoint $work/$m.pt --embeddings $work/$m-emb.parquet --head $work/$m-head.parquet
  run geometry --dataset cifar10 --model $m --augmentation standard --noise 0.0 --seed 0 --embeddings $work/$m-emb.parquet \
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
        --augmentation standard --noise 0.0 --seed 0 --labels $work/labels.parquet \
        --checkpoint $work/det-$det-$rep-$m.pt --train-log $work/det-$det-$rep-$m-log.parquet 2>/dev/null
      echo "deterministic=$det run $rep $m: $(( ($(date +%s%N) - start) / 1000000 )) ms, checkpoint md5 $(md5sum < $work/det-$det-$rep-$m.pt | cut -c1-12), log md5 $(md5sum < $work/det-$det-$rep-$m-log.parquet | cut -c1-12)"
    done
  done
done
