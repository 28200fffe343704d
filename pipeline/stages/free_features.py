"""Stage ``free_features`` (Section 5.1, Figures 1 and 5): optimise the representations
themselves, no encoder, and watch them reach the closed-form optimum of pipeline.maths.theory.

Every sample i of a balanced toy dataset (K classes, ``samples_per_class`` each) owns a free
feature z_i = rho v_i / |v_i| on the rho-sphere in R^h; Adam moves the v_i (and, for ``ce``,
the head). Three losses:

- ``supcon`` (temperature tau): on the whole dataset as one batch (``full``), or on batches
  of b samples drawn i.i.d. with replacement, like the training sampler;
- ``ce_fixed``: cross-entropy with a fixed regular-simplex head of row norm r_W;
- ``ce``: cross-entropy with a learned bias-free head in the Frobenius ball
  ||W||_F <= sqrt(K) r_W, the constraint of theory.ce_learned_head_bound (kept on its
  boundary, where the optimum lies, as W = sqrt(K) r_W U / ||U||_F with U free).

Every ``log_every`` iterations a row records the training loss, an evaluation loss, its
closed-form optimum and the gap between them, and the spread of the class-mean cosines
around the simplex value -1/(K-1). Evaluation: the full batch itself (full-batch supcon);
the mean CE over all samples, which is the sampler's exact expectation (ce models); for
mini-batch supcon, ``eval_batches`` batches drawn once from the sampler, against the mean of
their own closed forms (theory.supcon_at_simplex), which the features reach exactly at the
simplex; the column ``optimum`` holds the sampler expectation theory.expected_supcon_optimum.

A second experiment (``multiset``, Figure 5): K = 3 classes of ``samples_per_class`` samples
on the circle, every multiset of ``batch_size`` sample indices as one batch; the mean loss
over all of them is minimised and meets the closed form, while single batches with unequal
class counts, optimised alone, go below theirs: the theorem is about the total.

Outputs: one Parquet table (``TABLE_SCHEMA``, one row per record) and a directory of figures
(PNG and PDF, via pipeline.infra.plotting.save_figure): ``convergence_<loss>``, ``circle_k3``
(K = 3, h = 2 points at a few iterations, Figure 1) and ``multiset_batches_k3`` (Figure 5).
Deterministic: float64, one CPU thread, every draw from a seeded generator.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from pipeline.infra import numerics
from pipeline.infra.io import atomic_dir, write_parquet
from pipeline.infra.plotting import new_figure, save_figure, style
from pipeline.maths import theory
from pipeline.maths.losses import cross_entropy_loss, supcon_loss
from pipeline.maths.metrics import pairwise_cosines, row_cosines
from pipeline.maths.optim import Adam
from pipeline.maths.simplex import regular_simplex

log = logging.getLogger(__name__)

LOSSES = ("supcon", "ce_fixed", "ce")
# Representation dimension as a function of K (the grid: h in {K-1, 2K}).
DIM_RULES = {"K-1": lambda k: k - 1, "K": lambda k: k, "2K": lambda k: 2 * k}
FULL = "full"

_MAX_MULTISETS = 200_000  # the multiset experiment holds M b^2 float64 logits in memory


TABLE_SCHEMA = pa.schema(
    [
        ("experiment", pa.string()),  # "grid" or "multiset"
        ("loss_name", pa.string()),  # supcon | ce_fixed | ce
        ("num_classes", pa.int64()),  # K
        ("dim", pa.int64()),  # h
        ("samples_per_class", pa.int64()),
        ("full_batch", pa.bool_()),  # True: the dataset as one batch (multiset: all multisets)
        ("batch_size", pa.int64()),  # b (= N for full batch)
        ("temperature", pa.float64()),  # tau; null for ce models
        ("iteration", pa.int64()),  # optimiser steps done
        ("loss", pa.float64()),  # training objective, mean over the steps since the last row
        ("eval_loss", pa.float64()),  # see the module docstring
        ("eval_optimum", pa.float64()),  # closed form on exactly the evaluated batches
        ("gap", pa.float64()),  # eval_loss - eval_optimum
        ("relative_gap", pa.float64()),  # gap / eval_optimum
        ("optimum", pa.float64()),  # sampler-expected optimum (theory)
        ("class_mean_cosine_min", pa.float64()),
        ("class_mean_cosine_max", pa.float64()),
        ("class_mean_cosine_deviation", pa.float64()),  # max |cos - (-1/(K-1))| over pairs
        ("sample_to_class_mean_cosine_min", pa.float64()),  # 1 at collapse
    ]
)


# ----------------------------------------------------------------------------- the runs


@dataclass(frozen=True)
class Run:
    """One free-feature optimisation of the grid."""

    loss_name: str
    num_classes: int
    dim: int
    samples_per_class: int
    batch_size: int | None  # None: full batch
    temperature: float | None  # supcon only

    @property
    def num_samples(self) -> int:
        return self.num_classes * self.samples_per_class

    @property
    def label(self) -> str:
        b = "full" if self.batch_size is None else f"b={self.batch_size}"
        tau = "" if self.temperature is None else f", tau={self.temperature:g}"
        return f"{self.loss_name} K={self.num_classes} h={self.dim} {b}{tau}"


def grid_runs(section: dict) -> list[Run]:
    """The runs of the grid, in a fixed order (loss, K, h, tau, batch size)."""
    runs = []
    for loss_name in section["losses"]:
        if loss_name not in LOSSES:
            raise ValueError(f"free_features.losses: unknown loss {loss_name!r} (known: {LOSSES})")
        temperatures = section["temperatures"] if loss_name == "supcon" else [None]
        for k, rule, tau, b in itertools.product(
            section["num_classes"], section["dims"], temperatures, section["batch_sizes"]
        ):
            runs.append(
                Run(
                    loss_name=loss_name,
                    num_classes=int(k),
                    dim=DIM_RULES[rule](int(k)),
                    samples_per_class=int(section["samples_per_class"]),
                    batch_size=None if b == FULL else int(b),
                    temperature=None if tau is None else float(tau),
                )
            )
    return runs


def check_section(section: dict) -> None:
    """Cross-field rules the schema cannot state; errors name the key and value."""
    t = section["iterations"]
    late = [s for s in section["snapshots"] if s > t]
    if late:
        raise ValueError(
            f"free_features.snapshots: {late} lie beyond free_features.iterations = {t}"
        )
    multiset = section["multiset"]
    late = [s for s in multiset["snapshots"] if s > multiset["iterations"]]
    if late:
        raise ValueError(
            f"free_features.multiset.snapshots: {late} lie beyond "
            f"free_features.multiset.iterations = {multiset['iterations']}"
        )
    n, b = 3 * multiset["samples_per_class"], multiset["batch_size"]
    count = math.comb(n + b - 1, b)
    if count > _MAX_MULTISETS:
        raise ValueError(
            f"free_features.multiset: {multiset['samples_per_class']} samples per class and "
            f"batch_size {b} give {count:,} multisets, more than {_MAX_MULTISETS:,}"
        )
    for k in section["num_classes"]:
        for rule in section["dims"]:
            if DIM_RULES[rule](k) < 1:
                raise ValueError(f"free_features.dims: {rule!r} gives h < 1 for K = {k}")


# ----------------------------------------------------------------------------- losses


def batch_losses(
    features: torch.Tensor, labels: torch.Tensor, batches: torch.Tensor, temperature: float
) -> torch.Tensor:
    """supcon_loss of many batches at once: ``batches`` (M, b) holds sample indices (repeats
    allowed) into ``features`` (N, h) and ``labels`` (N,); returns the (M,) batch losses.

    Same definition as pipeline.maths.losses.supcon_loss (tests check it batch by batch), written
    for many small batches of few distinct samples: every logit is a gathered entry of the
    N x N Gram matrix, so the cost is one (N, N) product plus O(M b^2).
    """
    b = batches.shape[1]
    gram = features @ features.T / temperature  # (N, h) @ (h, N) -> (N, N)
    logits = gram[batches[:, :, None], batches[:, None, :]]  # (M, b, b)
    self_mask = torch.eye(b, dtype=torch.bool, device=features.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # the sum runs over a != i
    log_prob = logits - torch.logsumexp(logits, dim=2, keepdim=True)  # (M, b, b)
    batch_labels = labels[batches]  # (M, b)
    positives = (batch_labels[:, :, None] == batch_labels[:, None, :]) & ~self_mask
    num_positives = positives.sum(dim=2)  # (M, b)
    positive_sum = log_prob.masked_fill(~positives, 0.0).sum(dim=2)  # -inf * 0 would be NaN
    return (-positive_sum / num_positives.clamp(min=1)).sum(dim=1) / b


def class_counts(labels: np.ndarray, batches: np.ndarray, num_classes: int) -> np.ndarray:
    """(M, K) class counts of each index batch (M, b)."""
    batch_labels = labels[batches]  # (M, b)
    return (batch_labels[:, :, None] == np.arange(num_classes)).sum(axis=1)


def cosine_stats(z: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Class-mean cosines against the simplex value, and the worst sample-to-mean cosine."""
    means = np.stack([z[labels == c].mean(axis=0) for c in range(num_classes)])  # (K, h)
    cos = pairwise_cosines(means)
    target = -1.0 / (num_classes - 1)
    return {
        "class_mean_cosine_min": float(np.nanmin(cos)),
        "class_mean_cosine_max": float(np.nanmax(cos)),
        "class_mean_cosine_deviation": float(np.nanmax(np.abs(cos - target))),
        "sample_to_class_mean_cosine_min": float(np.nanmin(row_cosines(z, means[labels]))),
    }


def on_sphere(v: torch.Tensor, radius: float) -> torch.Tensor:
    return radius * F.normalize(v, dim=1)


def cosine_learning_rate(base: float, step: int, total: int) -> float:
    """Adam's learning rate at ``step`` in [0, total): cosine decay from ``base`` to 0."""
    return base * 0.5 * (1.0 + math.cos(math.pi * step / total))


# ----------------------------------------------------------------------------- one run


class Problem:
    """The dataset, the losses and the closed forms of one grid run."""

    def __init__(self, run: Run, section: dict, generator: torch.Generator):
        self.run = run
        self.radius = float(section["radius"])
        self.head_norm = float(section["head_norm"])
        k, n = run.num_classes, run.num_samples
        self.labels_np = np.repeat(np.arange(k), run.samples_per_class)
        self.labels = torch.as_tensor(self.labels_np)
        self.uniform = np.full(k, 1.0 / k)
        self.features = torch.randn(n, run.dim, generator=generator, dtype=torch.float64)
        self.features.requires_grad_()
        self.params = [self.features]
        self.head = self.head_free = None
        if run.loss_name == "ce_fixed":
            self.head = torch.as_tensor(regular_simplex(k, run.dim, self.head_norm))
        elif run.loss_name == "ce":
            self.head_free = torch.randn(k, run.dim, generator=generator, dtype=torch.float64)
            self.head_free.requires_grad_()
            self.params.append(self.head_free)
        self.eval_batches = None
        if run.loss_name == "supcon":
            if run.batch_size is None:
                counts = np.bincount(self.labels_np, minlength=k)
                self.optimum = theory.supcon_at_simplex(counts, n, k, run.temperature, self.radius)
                self.eval_optimum = self.optimum
            else:
                b = run.batch_size
                self.optimum = theory.expected_supcon_optimum(
                    self.uniform, b, run.temperature, self.radius
                )
                self.eval_batches = torch.randint(
                    n, (int(section["eval_batches"]), b), generator=generator
                )
                counts = class_counts(self.labels_np, self.eval_batches.numpy(), k)
                self.eval_optimum = float(
                    theory.supcon_at_simplex(counts, b, k, run.temperature, self.radius).mean()
                )
        elif run.loss_name == "ce_fixed":
            self.optimum = theory.ce_fixed_optimum(k, self.head_norm, self.radius)
            self.eval_optimum = self.optimum
        else:
            self.optimum = theory.ce_learned_head_bound(self.uniform, self.head_norm, self.radius)
            self.eval_optimum = self.optimum

    def z(self) -> torch.Tensor:
        return on_sphere(self.features, self.radius)  # (N, h)

    def loss(self, idx: torch.Tensor | None) -> torch.Tensor:
        """Training loss on the samples ``idx`` (None: all, once)."""
        z, y = self.z(), self.labels
        if idx is not None:
            z, y = z[idx], y[idx]
        if self.run.loss_name == "supcon":
            return supcon_loss(z, y, self.run.temperature)
        return cross_entropy_loss(z @ self.current_head().T, y)  # (b, h) @ (h, K) -> (b, K)

    def current_head(self) -> torch.Tensor:
        """The fixed simplex, or the learned head on the boundary of its constraint set,
        ||W||_F = sqrt(K) r_W (where the optimum lies: scaling W up lowers the loss once
        every sample is classified correctly), as a normalised free parameter."""
        if self.run.loss_name == "ce_fixed":
            return self.head
        limit = math.sqrt(self.run.num_classes) * self.head_norm
        return limit * self.head_free / torch.linalg.norm(self.head_free)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.eval_batches is not None:
            batches = batch_losses(self.z(), self.labels, self.eval_batches, self.run.temperature)
            eval_loss = float(batches.mean())
        else:
            eval_loss = float(self.loss(None))
        gap = eval_loss - self.eval_optimum
        return {
            "eval_loss": eval_loss,
            "eval_optimum": self.eval_optimum,
            "gap": gap,
            "relative_gap": gap / self.eval_optimum,
            "optimum": self.optimum,
            **cosine_stats(self.z().numpy(), self.labels_np, self.run.num_classes),
        }


def optimise(run: Run, section: dict, seed: int, snapshots=()) -> tuple[list[dict], dict]:
    """Adam on the free features (and learned head) of ``run``; returns the records and
    {iteration: (N, h) features} at the ``snapshots`` iterations."""
    generator = torch.Generator().manual_seed(seed)
    problem = Problem(run, section, generator)
    total, every = int(section["iterations"]), int(section["log_every"])
    lr = float(section["learning_rate"])
    optimizer = Adam(problem.params, lr=lr)  # torch.optim.Adam's update, without its wrapping
    base = {
        "experiment": "grid",
        "loss_name": run.loss_name,
        "num_classes": run.num_classes,
        "dim": run.dim,
        "samples_per_class": run.samples_per_class,
        "full_batch": run.batch_size is None,
        "batch_size": run.batch_size or run.num_samples,
        "temperature": run.temperature,
    }
    rows: list[dict] = []
    kept: dict[int, np.ndarray] = {}
    window = []
    for step in range(total + 1):
        if step in snapshots:
            kept[step] = problem.z().detach().numpy().copy()
        if step % every == 0 or step == total:
            stats = problem.evaluate()
            loss = float(np.mean(window)) if window else stats["eval_loss"]
            rows.append({**base, "iteration": step, "loss": loss, **stats})
            window = []
        if step == total:
            break
        optimizer.lr = cosine_learning_rate(lr, step, total)
        idx = None
        if run.batch_size is not None:
            idx = torch.randint(run.num_samples, (run.batch_size,), generator=generator)
        loss = problem.loss(idx)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        window.append(loss.item())
    return rows, kept


# ----------------------------------------------------------------------------- Figure 5


@dataclass
class MultisetResult:
    labels: np.ndarray  # (N,)
    batches: np.ndarray  # (M, b) sample indices, one row per multiset
    configurations: list[tuple[int, ...]]  # sorted class counts, one per group
    group: np.ndarray  # (M,) index into configurations
    closed_form: np.ndarray  # (len(configurations),) supcon at the simplex
    single_batch_minimum: np.ndarray  # (len(configurations),) optimised alone
    snapshots: dict[int, np.ndarray]  # iteration -> (M,) batch losses
    rows: list[dict]


def multisets(num_samples: int, batch_size: int) -> np.ndarray:
    """Every multiset of ``batch_size`` indices from range(num_samples), (M, b), sorted rows
    in lexicographic order."""
    combos = itertools.combinations_with_replacement(range(num_samples), batch_size)
    return np.array(list(combos), dtype=np.int64)


def minimise_lbfgs(param: torch.Tensor, objective, iterations: int, each=None) -> None:
    """``iterations`` L-BFGS steps (strong Wolfe line search) on ``param``; ``each(step)`` is
    called before every step and after the last, for records."""
    optimizer = torch.optim.LBFGS(
        [param],
        lr=1.0,
        max_iter=1,
        tolerance_grad=0.0,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = objective()
        loss.backward()
        return loss

    for step in range(iterations + 1):
        if each is not None:
            each(step)
        if step < iterations:
            optimizer.step(closure)


def single_batch_minimum(
    counts: tuple[int, ...],
    dim: int,
    temperature: float,
    radius: float,
    iterations: int,
    starts: int,
    seed: int,
) -> float:
    """Minimum (best of ``starts`` random starts) of the supcon loss of one batch with class
    ``counts``, its b features free on the sphere: what a single batch can reach alone."""
    labels = torch.as_tensor(np.repeat(np.arange(len(counts)), counts))
    best = math.inf
    for start in range(starts):
        generator = torch.Generator().manual_seed(seed + start)
        v = torch.randn(len(labels), dim, generator=generator, dtype=torch.float64)
        v.requires_grad_()

        def objective(v=v) -> torch.Tensor:
            return supcon_loss(on_sphere(v, radius), labels, temperature)

        minimise_lbfgs(v, objective, iterations)
        with torch.no_grad():
            best = min(best, float(objective()))
    return best


def multiset_experiment(section: dict, seed: int) -> MultisetResult:
    """Figure 5: minimise the mean supcon loss over every multiset batch (L-BFGS), K = 3,
    h = 2, and compare each label configuration with its closed form and its own minimum."""
    cfg = section["multiset"]
    k, dim, radius = 3, 2, float(section["radius"])
    tau, b = float(cfg["temperature"]), int(cfg["batch_size"])
    labels = np.repeat(np.arange(k), int(cfg["samples_per_class"]))
    n = labels.size
    batches = multisets(n, b)
    counts = class_counts(labels, batches, k)  # (M, K)
    closed = theory.supcon_at_simplex(counts, b, k, tau, radius)  # (M,)
    theory_total = float(closed.mean())
    keys = [tuple(sorted(row, reverse=True)) for row in counts.tolist()]
    configurations = sorted(
        set(keys), key=lambda c: (theory.supcon_at_simplex(np.array(c), b, k, tau, radius), c)
    )
    index = {c: i for i, c in enumerate(configurations)}
    group = np.array([index[c] for c in keys])
    closed_by_group = np.array(
        [theory.supcon_at_simplex(np.array(c), b, k, tau, radius) for c in configurations]
    )
    single = np.array(
        [
            single_batch_minimum(
                c,
                dim,
                tau,
                radius,
                int(cfg["single_batch_iterations"]),
                int(cfg["single_batch_starts"]),
                seed,
            )
            for c in configurations
        ]
    )

    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(n, dim, generator=generator, dtype=torch.float64).requires_grad_()
    y = torch.as_tensor(labels)
    batch_index = torch.as_tensor(batches)

    def objective() -> torch.Tensor:
        return batch_losses(on_sphere(v, radius), y, batch_index, tau).mean()

    rows, snapshots = [], {}
    base = {
        "experiment": "multiset",
        "loss_name": "supcon",
        "num_classes": k,
        "dim": dim,
        "samples_per_class": int(cfg["samples_per_class"]),
        "full_batch": True,
        "batch_size": b,
        "temperature": tau,
    }

    @torch.no_grad()
    def record(step: int) -> None:
        z = on_sphere(v, radius)
        per_batch = batch_losses(z, y, batch_index, tau).numpy()
        if step in cfg["snapshots"]:
            snapshots[step] = per_batch
        value = float(per_batch.mean())
        gap = value - theory_total
        rows.append(
            {
                **base,
                "iteration": step,
                "loss": value,
                "eval_loss": value,
                "eval_optimum": theory_total,
                "gap": gap,
                "relative_gap": gap / theory_total,
                "optimum": theory_total,
                **cosine_stats(z.numpy(), labels, k),
            }
        )

    minimise_lbfgs(v, objective, int(cfg["iterations"]), record)
    return MultisetResult(
        labels=labels,
        batches=batches,
        configurations=configurations,
        group=group,
        closed_form=closed_by_group,
        single_batch_minimum=single,
        snapshots=snapshots,
        rows=rows,
    )


# ----------------------------------------------------------------------------- figures


def plot_convergence(rows: list[dict], loss_names: list[str], title: str):
    """Rows: loss with its optimum, |relative gap| (log), class-mean cosine deviation (log);
    one column per (K, h); one line per batch size and temperature (or loss)."""
    grid = [r for r in rows if r["experiment"] == "grid" and r["loss_name"] in loss_names]
    panels = sorted({(r["num_classes"], r["dim"]) for r in grid})
    runs = sorted(
        {(r["loss_name"], r["full_batch"], r["batch_size"], r["temperature"] or 0.0) for r in grid},
        key=lambda t: (loss_names.index(t[0]), not t[1], t[2], t[3]),
    )
    styles = ["-", "--", ":", "-."]
    variants = sorted({(t[0], t[3]) for t in runs}, key=lambda v: (loss_names.index(v[0]), v[1]))
    sizes = sorted({(not t[1], t[2] if not t[1] else 0) for t in runs})
    with mpl.rc_context(style()):
        fig = new_figure(0.8 + 3.3 * len(panels), 8.2)
        axes = fig.subplots(3, len(panels), sharex=True, squeeze=False)
        for col, (k, h) in enumerate(panels):
            for loss_name, full, b, tau in runs:
                of_run = [
                    r
                    for r in grid
                    if (
                        r["num_classes"],
                        r["dim"],
                        r["loss_name"],
                        r["full_batch"],
                        r["batch_size"],
                        r["temperature"] or 0.0,
                    )
                    == (k, h, loss_name, full, b, tau)
                ]
                if not of_run:
                    continue
                it = np.array([r["iteration"] for r in of_run])
                color = f"C{sizes.index((not full, 0 if full else b))}"
                ls = styles[variants.index((loss_name, tau)) % len(styles)]
                name = "full batch" if full else f"b = {b}"
                name += f", tau = {tau:g}" if loss_name == "supcon" else f", {loss_name}"
                kw = {"color": color, "ls": ls, "lw": 1.2, "label": name}
                axes[0, col].plot(it, [r["eval_loss"] for r in of_run], **kw)
                axes[0, col].axhline(
                    of_run[0]["eval_optimum"], color=color, ls=ls, lw=0.6, alpha=0.6
                )
                gap = np.abs([r["relative_gap"] for r in of_run])
                axes[1, col].plot(it, np.maximum(gap, 1e-17), **kw)
                axes[2, col].plot(it, [r["class_mean_cosine_deviation"] for r in of_run], **kw)
            axes[0, col].set_title(f"K = {k}, h = {h}")
            axes[1, col].set_yscale("log")
            axes[2, col].set_yscale("log")
            axes[-1, col].set_xlabel("iteration (Adam steps)")
        axes[0, 0].set_ylabel("evaluation loss (nats);\nthin line: closed-form optimum")
        axes[1, 0].set_ylabel("|loss - optimum| / optimum\n(dimensionless)")
        axes[2, 0].set_ylabel("max |class-mean cosine\n+ 1/(K-1)| over pairs")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(
            handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize="small"
        )
        fig.suptitle(title)
    return fig


def plot_circle(snapshots: dict[str, dict[int, np.ndarray]], labels: np.ndarray, radius: float):
    """Figure 1: the K = 3, h = 2 free features on the circle at a few iterations; one row
    per run, one colour per class, the class means as crosses."""
    names = list(snapshots)
    steps = sorted({s for kept in snapshots.values() for s in kept})
    angle = np.linspace(0, 2 * np.pi, 200)
    with mpl.rc_context(style()):
        fig = new_figure(0.6 + 2.3 * len(steps), 0.6 + 2.4 * len(names))
        axes = fig.subplots(len(names), len(steps), squeeze=False)
        for row, name in enumerate(names):
            for col, step in enumerate(steps):
                ax = axes[row, col]
                ax.plot(radius * np.cos(angle), radius * np.sin(angle), color="0.8", lw=0.8)
                z = snapshots[name].get(step)
                if z is not None:
                    for c in np.unique(labels):
                        pts = z[labels == c]
                        ax.plot(
                            pts[:, 0],
                            pts[:, 1],
                            ls="none",
                            marker="o",
                            ms=4,
                            alpha=0.7,
                            color=f"C{c}",
                        )
                        mean = pts.mean(axis=0)
                        ax.plot(mean[0], mean[1], marker="x", ms=8, mew=2, color=f"C{c}")
                ax.set_aspect("equal")
                ax.set_xlim(-1.25 * radius, 1.25 * radius)
                ax.set_ylim(-1.25 * radius, 1.25 * radius)
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(f"iteration {step}")
                if col == 0:
                    ax.set_ylabel(name)
        fig.suptitle(
            "Free features, K = 3 classes on the circle (h = 2, full batch): dots = samples, "
            "x = class means;\nat the optimum each class collapses to one vertex of an "
            "equilateral triangle (pairwise cosine -1/2)"
        )
    return fig


def plot_multiset(result: MultisetResult, section: dict):
    """Figure 5: per label configuration, the batch losses at a few iterations of the
    optimisation of the total, the closed form at the simplex and the single-batch minimum;
    right: the total against the theory."""
    cfg = section["multiset"]
    steps = sorted(result.snapshots)
    x = np.arange(len(result.configurations))
    rng = np.random.default_rng(0)  # jitter only
    rows = result.rows
    with mpl.rc_context(style()):
        fig = new_figure(13.0, 5.2)
        left, right = fig.subplots(1, 2, width_ratios=[2.4, 1.0])
        for i, step in enumerate(steps):
            losses = result.snapshots[step]
            shift = (i - (len(steps) - 1) / 2) * 0.22
            jitter = rng.uniform(-0.07, 0.07, size=losses.size)
            # Rasterised: tens of thousands of dots would bloat the PDF.
            left.plot(
                x[result.group] + shift + jitter,
                losses,
                ls="none",
                marker=".",
                ms=2,
                alpha=0.25,
                color=f"C{i}",
                label=f"every batch, iteration {step}",
                rasterized=True,
            )
        left.plot(
            x,
            result.closed_form,
            ls="none",
            marker="_",
            ms=22,
            mew=2.5,
            color="k",
            label="closed form at the simplex (where the last iteration's batches sit)",
        )
        left.plot(
            x,
            result.single_batch_minimum,
            ls="none",
            marker="v",
            ms=7,
            color="tab:red",
            label="minimum of that batch alone",
        )
        left.set_xticks(x)
        left.set_xticklabels(
            ["\n".join(map(str, c)) for c in result.configurations], fontsize="small"
        )
        left.set_xlabel("label configuration (class counts in the batch, sorted)")
        left.set_ylabel("supcon loss of one batch (nats)")
        handles, names = left.get_legend_handles_labels()
        fig.legend(
            handles, names, loc="outside lower center", ncols=5, fontsize="small", markerscale=1.5
        )
        it = [r["iteration"] for r in rows]
        right.plot(
            it, [r["loss"] for r in rows], color="C0", marker=".", label="mean over all batches"
        )
        right.axhline(
            rows[0]["optimum"],
            color="k",
            ls="--",
            lw=1,
            label=f"closed form {rows[0]['optimum']:.6f}",
        )
        final = rows[-1]
        right.set_title(f"final gap {final['gap']:.1e} nats", fontsize="medium")
        right.set_xlabel("iteration (L-BFGS)")
        right.set_ylabel("mean supcon loss over all multisets (nats)")
        right.legend(fontsize="small")
        fig.suptitle(
            f"All {len(result.batches):,} multisets of b = {cfg['batch_size']} from "
            f"{len(result.labels)} samples (K = 3, {cfg['samples_per_class']} per class, "
            f"h = 2, tau = {cfg['temperature']:g}): the total meets the closed form, "
            "single batches can go below theirs"
        )
    return fig


# ----------------------------------------------------------------------------- the stage


def free_features(params: dict, *, table: Path, figures: Path) -> pa.Table:
    """Run the grid and the multiset experiment; write the records to ``table`` (Parquet)
    and the figures into directory ``figures`` (replaced as a whole)."""
    section = params["free_features"]
    check_section(section)
    numerics.configure_torch(torch)  # one thread, the portable kernels
    seed, dpi = int(section["seed"]), int(section["dpi"])
    start = time.process_time()
    rows: list[dict] = []
    circle: dict[str, dict[int, np.ndarray]] = {}
    circle_labels = None
    for number, run in enumerate(grid_runs(section)):
        drawn = run.num_classes == 3 and run.dim == 2 and run.batch_size is None
        snapshots = section["snapshots"] if drawn else ()
        run_rows, kept = optimise(run, section, seed + number, snapshots)
        rows += run_rows
        if drawn:
            circle[run.label.replace(" K=3 h=2 full", "")] = kept
            circle_labels = np.repeat(np.arange(3), run.samples_per_class)
        final = run_rows[-1]
        log.info(
            "%s: relative gap %.2e, class-mean cosine deviation %.2e",
            run.label,
            final["relative_gap"],
            final["class_mean_cosine_deviation"],
        )
    multiset = multiset_experiment(section, seed)
    rows += multiset.rows
    log.info("multiset: gap %.2e", multiset.rows[-1]["gap"])
    result = pa.Table.from_pylist(rows, schema=TABLE_SCHEMA)
    losses = list(section["losses"])
    with atomic_dir(figures) as tmp:
        if "supcon" in losses:
            fig = plot_convergence(
                rows,
                ["supcon"],
                "Free features, supcon: convergence to the closed form and to the simplex",
            )
            save_figure(fig, tmp, "convergence_supcon", dpi)
        ce = [name for name in ("ce_fixed", "ce") if name in losses]
        if ce:
            fig = plot_convergence(
                rows,
                ce,
                "Free features, CE (fixed simplex head; learned "
                "head with ||W||_F <= sqrt(K) r_W): convergence",
            )
            save_figure(fig, tmp, "convergence_ce", dpi)
        if circle:
            save_figure(
                plot_circle(circle, circle_labels, float(section["radius"])), tmp, "circle_k3", dpi
            )
        save_figure(plot_multiset(multiset, section), tmp, "multiset_batches_k3", dpi)
    write_parquet(result, table, metadata={"free_features": section})
    log.info("free_features: %d records, %.1f s CPU", result.num_rows, time.process_time() - start)
    return result
