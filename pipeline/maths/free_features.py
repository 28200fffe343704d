"""Free features (Section 5.1, Figures 1 and 5): optimise the representations themselves, no
encoder, and watch them reach the closed forms of pipeline.maths.theory.

Every sample i of a balanced toy dataset (K classes, ``samples_per_class`` each) owns a free
feature z_i = rho v_i / |v_i| on the rho-sphere in R^h; Adam moves the v_i (and, for ``ce``,
the head). Three losses (:class:`Run`):

- ``supcon`` (temperature tau): on the whole dataset as one batch (full batch), or on
  batches of b samples drawn i.i.d. with replacement, like the training sampler;
- ``ce_fixed``: cross-entropy with a fixed regular-simplex head of row norm r_W;
- ``ce``: cross-entropy with a learned bias-free head in the Frobenius ball
  ||W||_F <= sqrt(K) r_W, the constraint of theory.ce_learned_head_bound (kept on its
  boundary, where the optimum lies, as W = sqrt(K) r_W U / ||U||_F with U free).

:func:`optimise` records, every ``log_every`` iterations, the training loss, an evaluation
loss, its closed-form optimum and the gap between them, and the spread of the class-mean
cosines around the simplex value -1/(K-1). Evaluation: the full batch itself (full-batch
supcon); the mean CE over all samples, which is the sampler's exact expectation (ce models);
for mini-batch supcon, ``eval_batches`` batches drawn once from the sampler, against the mean
of their own closed forms (theory.supcon_at_simplex), which the features reach exactly at the
simplex; the key ``optimum`` holds the sampler expectation theory.expected_supcon_optimum.

:func:`multiset_experiment` (Figure 5): K = 3 classes of ``samples_per_class`` samples on the
circle, every multiset of ``batch_size`` sample indices as one batch; the mean loss over all
of them is minimised (L-BFGS) and meets the closed form, while single batches with unequal
class counts, optimised alone, go below theirs: the theorem is about the total.

Records are dicts keyed as the stage's table (pipeline/stages/free_features.py). float64;
every draw comes from a generator seeded by the caller.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.maths import products, theory
from pipeline.maths.losses import cross_entropy_loss, supcon_loss
from pipeline.maths.metrics import pairwise_cosines, row_cosines
from pipeline.maths.optim import LBFGS, Adam
from pipeline.maths.simplex import regular_simplex

LOSSES = ("supcon", "ce_fixed", "ce")


@dataclass(frozen=True)
class Run:
    """One free-feature optimisation: its loss, dataset (K classes of ``samples_per_class``),
    representation dimension h, batch size b and temperature tau."""

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


# ----------------------------------------------------------------------------- losses, measures


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
    gram = products.matmul(features, features.T) / temperature  # (N, h) @ (h, N) -> (N, N)
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
    """The dataset, the losses and the closed forms of one run: features on the sphere of
    ``radius`` rho, a head of row norm ``head_norm`` r_W, ``eval_batches`` evaluation batches
    (mini-batch supcon only)."""

    def __init__(
        self,
        run: Run,
        radius: float,
        head_norm: float,
        eval_batches: int,
        generator: torch.Generator,
    ):
        self.run = run
        self.radius = float(radius)
        self.head_norm = float(head_norm)
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
                self.eval_batches = torch.randint(n, (int(eval_batches), b), generator=generator)
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
        logits = products.matmul(z, self.current_head().T)  # (b, h) @ (h, K) -> (b, K)
        return cross_entropy_loss(logits, y)

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


def optimise(
    run: Run,
    *,
    radius: float,
    head_norm: float,
    iterations: int,
    learning_rate: float,
    log_every: int,
    eval_batches: int,
    seed: int,
    snapshots=(),
) -> tuple[list[dict], dict]:
    """``iterations`` Adam steps on the free features (and learned head) of ``run``, the
    learning rate decaying from ``learning_rate`` to 0 on a cosine; a record every
    ``log_every`` steps and after the last. Returns the records and {iteration: (N, h)
    features} at the ``snapshots`` iterations."""
    generator = torch.Generator().manual_seed(seed)
    problem = Problem(run, radius, head_norm, eval_batches, generator)
    total, every = int(iterations), int(log_every)
    lr = float(learning_rate)
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
    """``iterations`` L-BFGS steps (strong Wolfe line search, pipeline.maths.optim) on
    ``param``; ``each(step)`` is called before every step and after the last, for records."""
    optimizer = LBFGS(param, objective)
    for step in range(iterations + 1):
        if each is not None:
            each(step)
        if step < iterations:
            optimizer.step()


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


def multiset_experiment(
    *,
    samples_per_class: int,
    batch_size: int,
    temperature: float,
    radius: float,
    iterations: int,
    single_batch_iterations: int,
    single_batch_starts: int,
    snapshots,
    seed: int,
) -> MultisetResult:
    """Figure 5: minimise the mean supcon loss over every multiset batch (``iterations``
    L-BFGS steps), K = 3, h = 2, and compare each label configuration with its closed form
    and its own minimum (best of ``single_batch_starts`` runs of ``single_batch_iterations``
    steps); the batch losses are kept at the ``snapshots`` iterations."""
    k, dim = 3, 2  # three classes on the circle
    radius, tau, b = float(radius), float(temperature), int(batch_size)
    labels = np.repeat(np.arange(k), int(samples_per_class))
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
                int(single_batch_iterations),
                int(single_batch_starts),
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

    rows, kept = [], {}
    base = {
        "experiment": "multiset",
        "loss_name": "supcon",
        "num_classes": k,
        "dim": dim,
        "samples_per_class": int(samples_per_class),
        "full_batch": True,
        "batch_size": b,
        "temperature": tau,
    }

    @torch.no_grad()
    def record(step: int) -> None:
        z = on_sphere(v, radius)
        per_batch = batch_losses(z, y, batch_index, tau).numpy()
        if step in snapshots:
            kept[step] = per_batch
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

    minimise_lbfgs(v, objective, int(iterations), record)
    return MultisetResult(
        labels=labels,
        batches=batches,
        configurations=configurations,
        group=group,
        closed_form=closed_by_group,
        single_batch_minimum=single,
        snapshots=kept,
        rows=rows,
    )
