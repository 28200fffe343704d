"""Stage ``train``: one run = (dataset, model, noise fraction, seed).

Training semantics follow PAPER.md: batches drawn i.i.d. with replacement, SGD with momentum
and weight decay, per-iteration schedule ``exponential`` lr_i = lr ((T-i)/T)^5 or ``cosine``,
supcon on unit-sphere features at temperature tau, bias-free heads, ce_fixed head a fixed
regular simplex. Every ``eval_every`` iterations one row goes to the training log.
"""

from __future__ import annotations

import io
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from pipeline import datasets, schemas
from pipeline.io import atomic_path, read_parquet, write_parquet
from pipeline.losses import cross_entropy_loss, supcon_loss
from pipeline.models import Model, ModelConfig

log = logging.getLogger(__name__)

LOG_SCHEMA = schemas.TRAIN_LOG


class DivergenceError(ArithmeticError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainConfig:
    """The typed config of one run; stored in its checkpoint and its training log."""

    dataset: str
    noise_fraction: float
    seed: int
    batch_size: int
    iterations: int
    schedule: str
    learning_rate: float  # at iteration 0, per batch of ``batch_size``
    momentum: float
    weight_decay: float
    temperature: float
    eval_every: int
    model: ModelConfig

    @classmethod
    def from_params(cls, params: dict, dataset: str, model: str, noise: float, seed: int):
        common = params["train"]["common"]
        specific = params["train"]["models"][model]
        ds = datasets.spec(dataset)
        return cls(
            dataset=dataset,
            noise_fraction=float(noise),
            seed=int(seed),
            batch_size=common["batch_size"],
            iterations=common["iterations"],
            schedule=common["schedule"],
            learning_rate=float(specific["learning_rate"]),
            momentum=float(common["momentum"]),
            weight_decay=float(common["weight_decay"]),
            temperature=float(common["temperature"]),
            eval_every=common["eval_every"],
            model=ModelConfig(
                model=model,
                encoder=common["encoder"],
                input_shape=ds.image_shape,
                hidden_dims=tuple(common["hidden_dims"]),
                representation_dim=common["representation_dim"],
                num_classes=ds.num_classes,
                head_norm=float(specific.get("head_norm", 1.0)),
            ),
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**{**d, "model": ModelConfig.from_dict(d["model"])})

    @property
    def run_name(self) -> str:
        return f"{self.dataset}/{self.model.model}/noise{self.noise_fraction}-seed{self.seed}"


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Learning rate of SGD step ``step`` in [0, T)."""
    t = cfg.iterations
    if cfg.schedule == "exponential":
        return cfg.learning_rate * ((t - step) / t) ** 5
    if cfg.schedule == "cosine":
        return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * step / t))
    raise ValueError(f"unknown schedule {cfg.schedule!r} (known: exponential, cosine)")


def pick_device() -> torch.device:
    """``PIPELINE_DEVICE`` if set, else the GPU when there is one, else the CPU."""
    name = os.environ.get("PIPELINE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def normalised_images(data: datasets.Data, images: np.ndarray, device) -> torch.Tensor:
    """Scale to [0, 1], then standardise per channel with training-set statistics."""
    train = data.train.images.astype(np.float64) / data.pixel_max
    mean = train.mean(axis=(0, 2, 3))
    std = train.std(axis=(0, 2, 3))
    x = torch.as_tensor(images, device=device).float() / data.pixel_max  # (N, C, H, W)
    m = torch.as_tensor(mean, dtype=torch.float32, device=device)[None, :, None, None]
    s = torch.as_tensor(std, dtype=torch.float32, device=device)[None, :, None, None]
    return (x - m) / s


def read_labels(path: Path, expected_rows: int) -> pa.Table:
    table = read_parquet(path, {f.name: f.type for f in schemas.LABELS})
    if table.num_rows != expected_rows:
        raise ValueError(
            f"{path}: has {table.num_rows} labels, the training split has {expected_rows}"
        )
    return table


@torch.no_grad()
def represent_all(model: Model, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    return torch.cat([model.represent(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])


def class_means(z: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, h) mean representation per class; NaN rows for classes with no sample."""
    sums = torch.zeros(num_classes, z.shape[1], dtype=z.dtype, device=z.device)
    sums.index_add_(0, labels, z)
    counts = torch.bincount(labels, minlength=num_classes).to(z.dtype)
    return sums / counts[:, None]  # 0/0 -> NaN for an empty class


def nearest_class_mean(z: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """argmin_k |z - mu_k|, the class-mean ("explicit linear") classifier; empty classes
    are never predicted."""
    scores = z @ means.T - 0.5 * (means * means).sum(dim=1)  # (N, K): linear in z
    return torch.nan_to_num(scores, nan=float("-inf")).argmax(dim=1)


@torch.no_grad()
def evaluate(model: Model, x_train, y_noisy, y_clean, x_test, y_test) -> dict[str, float]:
    model.eval()
    k = model.config.num_classes
    z_train, z_test = represent_all(model, x_train), represent_all(model, x_test)
    means = class_means(z_train, y_noisy, k)
    if model.has_head:
        train_pred = model.logits(z_train).argmax(dim=1)
        test_head = (model.logits(z_test).argmax(dim=1) == y_test).double().mean().item()
    else:
        train_pred = nearest_class_mean(z_train, means)
        test_head = None
    model.train()
    return {
        "train_accuracy_noisy": (train_pred == y_noisy).double().mean().item(),
        "train_accuracy_clean": (train_pred == y_clean).double().mean().item(),
        "test_accuracy_class_mean": (nearest_class_mean(z_test, means) == y_test)
        .double()
        .mean()
        .item(),
        "test_accuracy_head": test_head,
    }


def train(
    params: dict,
    *,
    dataset: str,
    model: str,
    noise: float,
    seed: int,
    labels: Path,
    checkpoint: Path,
    train_log: Path,
) -> pa.Table:
    """Train one run; write its checkpoint to ``checkpoint`` and its log to ``train_log``."""
    from tqdm import tqdm

    cfg = TrainConfig.from_params(params, dataset, model, noise, seed)
    # One thread: results then do not depend on the machine's core count, and Snakemake
    # can run one training job per core.
    torch.set_num_threads(1)
    device = pick_device()
    data = datasets.load(dataset, params["datasets"][dataset])
    label_table = read_labels(Path(labels), data.train.labels.shape[0])
    if not np.array_equal(label_table["clean_label"].to_numpy(), data.train.labels):
        raise ValueError(f"{labels}: clean labels differ from dataset {dataset!r}'s training split")
    x_train = normalised_images(data, data.train.images, device)
    x_test = normalised_images(data, data.test.images, device)
    y_noisy = torch.as_tensor(label_table["noisy_label"].to_numpy().copy(), device=device)
    y_clean = torch.as_tensor(data.train.labels, device=device)
    y_test = torch.as_tensor(data.test.labels, device=device)

    torch.manual_seed(cfg.seed)  # initial weights
    net = Model(cfg.model).to(device)
    sampler = torch.Generator().manual_seed(cfg.seed)  # batch indices, drawn on the CPU
    optimizer = torch.optim.SGD(
        net.parameters(),
        lr=cfg.learning_rate,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    n = x_train.shape[0]
    rows: list[dict] = []
    window_loss = window_supcon = 0.0
    window = 0
    log.info("run %s on %s: %d iterations", cfg.run_name, device, cfg.iterations)
    bar = tqdm(total=cfg.iterations, desc=cfg.run_name, disable=None, mininterval=1.0)
    for step in range(cfg.iterations):
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = torch.randint(n, (cfg.batch_size,), generator=sampler).to(device)  # with replacement
        z = net.represent(x_train[idx])  # (b, h)
        y = y_noisy[idx]
        if net.has_head:
            loss = cross_entropy_loss(net.logits(z), y)
            with torch.no_grad():
                tracked = supcon_loss(torch.nn.functional.normalize(z, dim=1), y, cfg.temperature)
        else:
            loss = supcon_loss(z, y, cfg.temperature)
            tracked = loss.detach()
        value = loss.item()
        if not math.isfinite(value):
            raise DivergenceError(
                f"run {cfg.run_name}: loss is {value} at iteration {step + 1}; no outputs written"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window_loss += value
        window_supcon += tracked.item()
        window += 1
        bar.update(1)
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.iterations:
            row = {
                "iteration": done,
                "learning_rate": lr,
                "loss": window_loss / window,
                "supcon_loss": window_supcon / window,
                **evaluate(net, x_train, y_noisy, y_clean, x_test, y_test),
            }
            rows.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", train=f"{row['train_accuracy_noisy']:.3f}")
            window_loss = window_supcon = 0.0
            window = 0
    bar.close()
    final = rows[-1]
    log.info(
        "run %s done: loss %.4f, train acc (noisy) %.4f, test acc (class mean) %.4f",
        cfg.run_name, final["loss"], final["train_accuracy_noisy"],
        final["test_accuracy_class_mean"],
    )
    table = pa.Table.from_pylist(rows, schema=LOG_SCHEMA)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    save_checkpoint({"config": cfg.to_dict(), "state_dict": state}, Path(checkpoint))
    write_parquet(table, train_log, metadata={"train_config": cfg.to_dict()})
    return table


def save_checkpoint(obj: dict, path: Path) -> None:
    # Serialise to memory first: torch.save names the zip's inner folder after the file,
    # and the temporary file name would otherwise leak into the bytes.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_checkpoint(path: Path) -> tuple[TrainConfig, dict]:
    """Load a checkpoint without executing code (``weights_only=True``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated zip, disallowed globals
        raise ValueError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or set(obj) != {"config", "state_dict"}:
        raise ValueError(f"{path}: not a checkpoint of this pipeline")
    return TrainConfig.from_dict(obj["config"]), obj["state_dict"]
