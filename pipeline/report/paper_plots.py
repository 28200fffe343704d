"""The paper's figures that need no stage's analysis, pure: tables in, a
``matplotlib.figure.Figure`` out (object-oriented API, matplotlib's default rc), drawn by stage
``figures`` (pipeline/stages/figures.py, which keeps the iterations-to-fit figure: it draws
aggregate's growth fit):

- ``plot_geometry``: Section 5.2, per model the cosine distributions against -1/(K-1) and 1;
- ``plot_gap_vs_accuracy``: claim (iii), the final gap to the optimum against test accuracy;
- ``plot_collapse``: NC1-NC4 and the test accuracies against the noise fraction;
- ``plot_training_curves``: loss, train and test accuracy over the iterations.
"""

from __future__ import annotations

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pipeline.infra import schemas
from pipeline.report.plotting import new_figure, style
from pipeline.report.sweep_plots import model_name

COSINE_KINDS = schemas.COSINE_KINDS
COSINE_LABELS = {
    "class_means": "across\nclass means",
    "sample_to_class_mean": "sample to\nits class mean",
    "head_weights": "across\nhead weights",
}

def plot_geometry(
    cosines: pd.DataFrame, *, dataset: str, num_classes: int, models: list[str],
    noise_fraction: float,
) -> Figure:
    """Section 5.2: one panel per model, a box per cosine kind (whiskers at min and max)."""
    simplex = -1.0 / (num_classes - 1)
    with mpl.rc_context(style()):
        fig = new_figure(0.5 + 3.4 * len(models), 4.6)
        axes = fig.subplots(1, len(models), sharey=True, squeeze=False)[0]
        for ax, model in zip(axes, models, strict=True):
            of_model = cosines[(cosines["dataset"] == dataset) & (cosines["model"] == model)]
            n_seeds = of_model["seed"].nunique()
            for x, kind in enumerate(COSINE_KINDS, start=1):
                values = of_model.loc[of_model["kind"] == kind, "value"].to_numpy()
                if values.size == 0:
                    text = "no head" if kind == "head_weights" else "no data"
                    ax.text(x, 0.0, text, ha="center", va="center", style="italic", color="0.4")
                    continue
                ax.boxplot([values], positions=[x], widths=0.6, whis=(0, 100), showfliers=False)
            ax.axhline(
                simplex, color="tab:red", ls="--", lw=1, label=f"simplex -1/(K-1) = {simplex:.4g}"
            )
            ax.axhline(1.0, color="tab:blue", ls=":", lw=1, label="1 (collapse)")
            ax.set_xticks(range(1, len(COSINE_KINDS) + 1))
            ax.set_xticklabels([COSINE_LABELS[k] for k in COSINE_KINDS])
            ax.set_xlim(0.4, len(COSINE_KINDS) + 0.6)
            ax.set_ylim(-1.05, 1.05)
            ax.set_title(f"{model_name(model)} ({n_seeds} seeds)")
        axes[0].set_ylabel("cosine similarity (dimensionless)")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=2)
        fig.suptitle(
            f"{dataset} (K = {num_classes}): cosine similarities at noise fraction "
            f"{noise_fraction:g}, "
            "pooled over seeds"
        )
    return fig


def plot_gap_vs_accuracy(
    runs: pd.DataFrame, *, dataset: str, num_classes: int, models: list[str]
) -> Figure:
    """The paper's claim, per run: close to the optimum <-> generalises well. Final gap to
    the optimum against test accuracy; left the supcon gap (optimised by supcon, tracked on
    the normalised features of the ce models), right each model's own loss gap."""
    runs = runs[runs["dataset"] == dataset]
    panels = (
        ("final_supcon_gap", "final supcon loss minus its\nsampler-expected optimum (nats)"),
        ("final_loss_gap", "final loss minus its bound (nats)\n(supcon: as left; ce: at the "
                           "feature norms)"),
    )
    noise_values = sorted(runs["noise_fraction"].unique())
    sizes = {p: 18 + 60 * i / max(len(noise_values) - 1, 1) for i, p in enumerate(noise_values)}
    with mpl.rc_context(style()):
        fig = new_figure(11.0, 4.6)
        axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
        for ax, (column, label) in zip(axes, panels, strict=True):
            for i, model in enumerate(models):
                of_model = runs[runs["model"] == model]
                ax.scatter(
                    of_model[column].to_numpy(np.float64),
                    100 * of_model["test_accuracy_class_mean"].to_numpy(np.float64),
                    s=[sizes[p] for p in of_model["noise_fraction"]],
                    color=f"C{i}", alpha=0.75, label=model_name(model),
                )
            ax.set_xscale("symlog", linthresh=1e-3)
            ax.set_xlabel(label)
        axes[0].set_ylabel("test accuracy, class-mean classifier (%)")
        axes[0].legend(fontsize="small", title="model (marker size: noise fraction)")
        fig.suptitle(
            f"{dataset} (K = {num_classes}): final gap to the optimum vs test accuracy, "
            f"one point per run (noise {min(noise_values):g} to {max(noise_values):g})"
        )
    return fig


COLLAPSE_PANELS = (
    ("nc1", "NC1: tr(Sw Sb+)/K", True),
    ("nc2_equinorm_cv", "NC2: CV of centred\nclass-mean norms", True),
    ("nc2_simplex_angle_deviation", "NC2: mean |cos + 1/(K-1)|\nof centred class means", False),
    ("nc3_self_duality", "NC3: ||W/|W| - M/|M|||\n(CE models)", False),
    ("nc4_head_ncm_agreement", "NC4: head agrees with\nnearest class mean (CE)", False),
)
ACCURACIES = (
    ("test_accuracy_class_mean", "-", "class-mean classifier"),
    ("test_accuracy_head", "--", "head"),
    ("probe_test_accuracy", ":", "linear probe"),
)


def plot_collapse(runs: pd.DataFrame, *, dataset: str, num_classes: int,
                  models: list[str]) -> Figure:
    """NC1-NC4 (pipeline.stages.geometry, pipeline.maths.collapse) and the three test accuracies
    (class-mean classifier, head, linear probe) against the noise fraction, mean over seeds."""
    runs = runs[runs["dataset"] == dataset]
    with mpl.rc_context(style()):
        fig = new_figure(13.0, 6.4)
        axes = fig.subplots(2, 3).ravel()
        for ax, (column, label, log_scale) in zip(axes, COLLAPSE_PANELS, strict=False):
            for i, model in enumerate(models):
                of_model = runs[runs["model"] == model]
                if column not in of_model or of_model[column].isna().all():
                    continue
                mean = of_model.groupby("noise_fraction")[column].mean()
                ax.plot(mean.index, mean.to_numpy(), marker="o", color=f"C{i}",
                        label=model_name(model))
            if log_scale:
                ax.set_yscale("log")
            ax.set_ylabel(label)
            ax.set_xlabel("noise fraction p")
        ax = axes[-1]
        for i, model in enumerate(models):
            of_model = runs[runs["model"] == model]
            for column, ls, _ in ACCURACIES:
                if column in of_model and of_model[column].notna().any():
                    mean = of_model.groupby("noise_fraction")[column].mean()
                    ax.plot(mean.index, 100 * mean.to_numpy(), ls=ls, color=f"C{i}")
        handles = [Line2D([], [], color=f"C{i}", label=model_name(m)) for i, m in enumerate(models)]
        handles += [Line2D([], [], color="0.3", ls=ls, label=name) for _, ls, name in ACCURACIES]
        ax.legend(handles=handles, fontsize="x-small")
        ax.set_ylabel("test accuracy (%)")
        ax.set_xlabel("noise fraction p")
        fig.suptitle(f"{dataset} (K = {num_classes}): neural collapse NC1-NC4 and test "
                     "accuracies, mean over seeds")
    return fig


CURVE_ROWS = (
    ("loss", "training loss (nats)", 1.0),
    ("supcon_gap", "supcon loss minus its\nsampler-expected optimum (nats)", 1.0),
    ("train_accuracy_noisy", "train accuracy,\nnoisy labels (%)", 100.0),
    ("test_accuracy_class_mean", "test accuracy,\nclass-mean classifier (%)", 100.0),
)


def plot_training_curves(
    logs: pd.DataFrame,
    *,
    dataset: str,
    num_classes: int,
    models: list[str],
    noise_fractions: list[float],
) -> Figure:
    """Rows: loss, train accuracy (noisy labels), test accuracy (class means); one column per
    model, one colour per noise fraction; each line is the mean over seeds per iteration."""
    logs = logs[logs["dataset"] == dataset]
    cmap = mpl.colormaps["viridis"]
    noise_fractions = sorted(float(p) for p in noise_fractions)
    colors = {p: cmap(i / max(len(noise_fractions) - 1, 1)) for i, p in enumerate(noise_fractions)}
    with mpl.rc_context(style()):
        fig = new_figure(0.8 + 3.6 * len(models), 2.1 * len(CURVE_ROWS) + 0.6)
        axes = fig.subplots(len(CURVE_ROWS), len(models), sharex=True, sharey="row", squeeze=False)
        for col, model in enumerate(models):
            of_model = logs[logs["model"] == model]
            axes[0, col].set_title(model_name(model))
            for p in noise_fractions:
                run = of_model[of_model["noise_fraction"] == p]
                mean = run.groupby("iteration", sort=True)[[c for c, _, _ in CURVE_ROWS]].mean()
                for row, (column, _, scale) in enumerate(CURVE_ROWS):
                    axes[row, col].plot(
                        mean.index.to_numpy(),
                        scale * mean[column].to_numpy(),
                        color=colors[p],
                        lw=1.2,
                        label=f"{p:g}",
                    )
            axes[-1, col].set_xlabel("iteration (SGD steps)")
        for row, (column, label, _) in enumerate(CURVE_ROWS):
            axes[row, 0].set_ylabel(label)
            if column == "supcon_gap":  # spans orders of magnitude; may dip just below 0
                axes[row, 0].set_yscale("symlog", linthresh=1e-3)
        axes[0, 0].legend(title="noise fraction p", fontsize="small")
        fig.suptitle(f"{dataset} (K = {num_classes}): training curves, mean over seeds")
    return fig
