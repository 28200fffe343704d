"""Stage ``free_features`` (Section 5.1, Figures 1 and 5): free features optimised onto the
closed-form optimum, pipeline.maths.free_features; this module reads its params section, runs
the grid of :func:`grid_runs` and the multiset experiment, and writes the records and figures.

The grid: every loss of ``losses`` (supcon at every temperature of ``temperatures``,
``ce_fixed``, ``ce``) x K in ``num_classes`` x h by each rule of ``dims`` x every batch size
of ``batch_sizes`` (``full``: the dataset as one batch), run by run with Adam
(maths.free_features.optimise) from seed ``seed`` + its number. The multiset experiment
(maths.free_features.multiset_experiment) runs from ``seed``.

Outputs: one Parquet table (``TABLE_SCHEMA``, one row per record) and a directory of figures
(PNG and PDF, via pipeline.report.plotting.save_figure): ``convergence_<loss>``, ``circle_k3``
(K = 3, h = 2 points at a few iterations, Figure 1) and ``multiset_batches_k3`` (Figure 5).
Deterministic: float64, one CPU thread, every draw from a seeded generator.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pyarrow as pa
import torch

from pipeline.infra import numerics
from pipeline.infra.io import atomic_dir, write_parquet
from pipeline.maths.free_features import (
    LOSSES,
    MultisetResult,
    Run,
    multiset_experiment,
    optimise,
)
from pipeline.report.plotting import new_figure, save_figure, style

log = logging.getLogger(__name__)

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
        ("eval_loss", pa.float64()),  # see pipeline.maths.free_features
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


# ----------------------------------------------------------------------------- the section


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


def adam_settings(section: dict) -> dict:
    """The keyword arguments of maths.free_features.optimise that the section sets (all but
    the run, its seed and the snapshots)."""
    keys = ("radius", "head_norm", "iterations", "learning_rate", "log_every", "eval_batches")
    return {key: section[key] for key in keys}


def multiset_settings(section: dict) -> dict:
    """The keyword arguments of maths.free_features.multiset_experiment that the section sets
    (all but the seed)."""
    cfg = section["multiset"]
    return {
        "samples_per_class": cfg["samples_per_class"],
        "batch_size": cfg["batch_size"],
        "temperature": cfg["temperature"],
        "radius": section["radius"],
        "iterations": cfg["iterations"],
        "single_batch_iterations": cfg["single_batch_iterations"],
        "single_batch_starts": cfg["single_batch_starts"],
        "snapshots": cfg["snapshots"],
    }


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
        run_rows, kept = optimise(
            run, **adam_settings(section), seed=seed + number, snapshots=snapshots
        )
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
    multiset = multiset_experiment(**multiset_settings(section), seed=seed)
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
