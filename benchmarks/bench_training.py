"""Training throughput (images/s): our device-resident loop vs a DataLoader loop vs bare
forward/backward, same model (ResNet-18, CIFAR variant), batch, loss and device.

- ours: pipeline.stages.train.Trainer.step — uint8 data on the device, whole-batch augmentation;
  all three loops share the SGD step itself (Trainer.update), so only data handling differs;
- dataloader: what the authors' code does — a Dataset with per-sample torchvision
  transforms (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize),
  DataLoader with workers, batches copied to the device;
- bare: forward/backward/step on one fixed, already normalised device-resident batch
  (the ceiling: no data handling at all).

Synthetic CIFAR-sized data (50,000 uint8 images): throughput does not depend on content.
Prints a table; a measurement, never a test. Targets on a GPU: ours >= 10x dataloader and
>= 90% of bare. On a CPU, use few steps: `python benchmarks/bench_training.py --steps 2`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pipeline.infra import datasets
from pipeline.maths.batches import channel_statistics
from pipeline.maths.models import ModelConfig
from pipeline.stages.train import TrainConfig, Trainer


def synthetic_cifar(n_train: int, seed: int = 0) -> datasets.Data:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n_train, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n_train)
    test = datasets.Split(images[:1000], labels[:1000])
    return datasets.Data("synthetic", 10, 255, datasets.Split(images, labels), test)


def config(model: str, batch: int, augmentation: str, compile_: bool) -> TrainConfig:
    return TrainConfig(
        dataset="synthetic", noise_fraction=0.0, seed=0, batch_size=batch, iterations=10**6,
        schedule="exponential", learning_rate=0.1, momentum=0.9, weight_decay=1e-4,
        temperature=0.1, eval_every=10**6, augmentation=augmentation, compile=compile_,
        model=ModelConfig(model, "resnet18", (3, 32, 32), (), 512, 10, 1.0),
    )


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, steps: int, warmup: int, device) -> float:
    for i in range(warmup):
        step(i)
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    sync(device)
    return time.perf_counter() - start


def ours(cfg, data, device, steps, warmup) -> float:
    trainer = Trainer(cfg, data, data.train.labels, device)
    return timed(trainer.step, steps, warmup, device)


def bare(cfg, data, device, steps, warmup) -> float:
    trainer = Trainer(cfg, data, data.train.labels, device)
    x = trainer.train_images.batch(torch.arange(cfg.batch_size))  # fixed, normalised
    y = trainer.y_noisy[: cfg.batch_size]
    return timed(lambda i: trainer.update(x, y, i), steps, warmup, device)


def dataloader(cfg, data, device, steps, warmup, workers) -> float:
    from torch.utils.data import DataLoader, Dataset, RandomSampler
    from torchvision import transforms

    mean, std = channel_statistics(data.train.images, 255)
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean.tolist(), std.tolist()),
    ])

    class Images(Dataset):
        def __init__(self, images, labels):
            self.images = images.transpose(0, 2, 3, 1)  # (N, H, W, C) as PIL expects
            self.labels = labels

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            from PIL import Image

            return transform(Image.fromarray(self.images[i])), int(self.labels[i])

    dataset = Images(data.train.images, data.train.labels)
    sampler = RandomSampler(dataset, replacement=True, num_samples=10**9)  # i.i.d. draws
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0, drop_last=True)
    trainer = Trainer(cfg, data, data.train.labels, device)
    batches = iter(loader)

    def step(i):
        x, y = next(batches)
        x = x.to(device, non_blocking=True)
        if trainer.train_images.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        trainer.update(x, y.to(device, non_blocking=True), i)

    return timed(step, steps, warmup, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="ce", choices=["ce", "supcon", "ce_fixed"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers")
    parser.add_argument("--train-size", type=int, default=50_000)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    steps = args.steps or (100 if gpu else 3)
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 1)
    workers = args.workers if args.workers is not None else (8 if gpu else 2)
    if not gpu:
        torch.set_num_threads(torch.get_num_threads())
    data = synthetic_cifar(args.train_size)
    rows = []
    variants = [("ours (device-resident, standard aug.)", "ours", False),
                ("dataloader (per-sample transforms)", "dataloader", False),
                ("bare forward/backward", "bare", False)]
    if args.compile:
        variants += [("ours + torch.compile", "ours", True), ("bare + torch.compile", "bare", True)]
    for label, kind, compile_ in variants:
        cfg = config(args.model, args.batch, "standard", compile_)
        if kind == "ours":
            seconds = ours(cfg, data, device, steps, warmup)
        elif kind == "bare":
            seconds = bare(cfg, data, device, steps, warmup)
        else:
            seconds = dataloader(cfg, data, device, steps, warmup, workers)
        rows.append((label, steps * args.batch / seconds, seconds / steps * 1e3))
        print(f"  {label}: {rows[-1][1]:.0f} images/s", flush=True)
    # One evaluation (class means over all training embeddings + test accuracy), to
    # estimate a paper run: 100,000 steps and an evaluation every 500.
    trainer = Trainer(config(args.model, args.batch, "none", False), data, data.train.labels,
                      device)
    trainer.evaluate()
    sync(device)
    start = time.perf_counter()
    trainer.evaluate()
    sync(device)
    eval_seconds = time.perf_counter() - start
    step_seconds = args.batch / base_ips(rows, "ours (device-resident, standard aug.)")
    run_hours = (100_000 * step_seconds + 200 * eval_seconds) / 3600
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"\ndevice: {name}; torch {torch.__version__}; model ResNet-18 ({args.model}); "
          f"batch {args.batch}; {steps} timed steps after {warmup} warm-up; "
          f"DataLoader workers {workers}")
    print(f"{'loop':<40}{'images/s':>12}{'ms/step':>10}{'vs dataloader':>15}{'vs bare':>10}")
    base = {label: ips for label, ips, _ in rows}
    loader_ips = base["dataloader (per-sample transforms)"]
    bare_ips = base["bare forward/backward"]
    for label, ips, ms in rows:
        print(f"{label:<40}{ips:>12.0f}{ms:>10.1f}{ips / loader_ips:>14.1f}x"
              f"{ips / bare_ips:>9.0%}")
    print(f"one evaluation over {args.train_size:,} train + 1,000 test images: "
          f"{eval_seconds:.2f} s")
    print(f"estimated paper run (100,000 steps, evaluation every 500): {run_hours:.2f} h")


def base_ips(rows, label: str) -> float:
    return {name: ips for name, ips, _ in rows}[label]


if __name__ == "__main__":
    main()
