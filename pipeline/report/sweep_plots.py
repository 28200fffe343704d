"""The figures beyond the paper: one setting axis swept (issue 15, items 1-3), drawn by stage
``figures`` only when the grid gives that axis two values or more.

- ``temperature_<label>``: against tau (log), supcon (and supcon_mv) only: the class-mean
  cosines against -1/(K-1), their distance to the simplex (the taus whose seed mean is within
  ``claims.simplex_cosine_deviation`` are ringed), within-class collapse (sample-to-class-mean
  cosine, NC1), the final supcon gap to its sampler-expected optimum at each tau, the test
  accuracies; and the free features' final records (stage ``free_features``), per (K, h) and
  batch: |relative gap| and max |cos + 1/(K-1)| against tau, with claim (i)'s tolerances.
- ``batch_size_<label>``: against b (log2), every model: the final supcon gap, the optimum it
  is measured from (it depends on b), the distance of the class means to the simplex, the
  sample-to-class-mean cosine and the test accuracies.
- ``imbalance_<label>``: against rho = N_max/N_min (log), every model: the centred class means'
  cosines within the majority, within the minority (the last floor(K/2) classes,
  pipeline.maths.imbalance.minority_classes) and across, the head rows' (CE models; minority
  collapse: the minority's cosine goes to 1), supcon's final gap, and per model the per-class
  test accuracy (thin lines) with the group means (bold).

A sweep covers the runs of one dataset and augmentation at the grid's lowest noise fraction
and holds the other two setting axes at one value each: a grid that varies two of them gets
one figure per value of the others, its stem naming them (``temperature_digits-rho1-b256``).
Each line is the mean over seeds, its band the seeds' min to max. Every function here is pure:
tables in, a ``matplotlib.figure.Figure`` out (object-oriented API, matplotlib's default rc).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import matplotlib as mpl
import numpy as np
import pandas as pd
import pyarrow as pa
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from pipeline.infra.grid import GRID_AXES, sweeps_axis
from pipeline.infra.grid import jobs as grid_jobs
from pipeline.infra.runs import COLUMNS, SETTING, Run, setting_name
from pipeline.maths.imbalance import minority_classes
from pipeline.report.plotting import new_figure, style

log = logging.getLogger(__name__)

MODEL_NAMES = {"supcon": "SupCon", "supcon_mv": "SupCon, two views", "ce": "CE",
               "ce_fixed": "CE (fixed simplex head)"}
SUPCON_MODELS = ("supcon", "supcon_mv")  # the models a temperature sweep trains differently
SWEEPS = {"temperature": "temperature", "batch_size": "batch_size",
          "imbalance_ratio": "imbalance"}  # swept axis -> figure kind (the stem's first word)
AXIS_LABELS = {"temperature": "temperature tau", "batch_size": "batch size b (samples per step)",
               "imbalance_ratio": "imbalance ratio rho (N_max / N_min)"}
# The free-features records (stage free_features) the temperature figure reads, with types.
FREE_FEATURES_COLUMNS = {
    "experiment": pa.string(), "loss_name": pa.string(), "num_classes": pa.int64(),
    "dim": pa.int64(), "full_batch": pa.bool_(), "batch_size": pa.int64(),
    "temperature": pa.float64(), "iteration": pa.int64(), "relative_gap": pa.float64(),
    "class_mean_cosine_deviation": pa.float64(),
}
SYMBOLS = {"imbalance_ratio": "rho", "temperature": "tau", "batch_size": "b", "iterations": "T"}
GROUPS = (("majority", "-"), ("minority", "--"), ("across", ":"))
GAP_REFERENCE = ("final supcon loss minus its sampler-\nexpected value at the simplex (nats)")
# Under imbalance the reference of the gap is no minimum (docs/theory.md, section 7).
IMBALANCE_NOTE = ("for rho > 1 the simplex is not the supcon\nminimiser (K >= 3, docs/theory.md "
                  "section 7):\nthe gap may be < 0")


def model_name(model: str) -> str:
    return MODEL_NAMES.get(model, model)


def fixed_name(fixed: dict) -> str:
    """Setting axes and their values spelled as ``runs.setting_name`` spells them
    ("rho1-b256-T3000")."""
    return setting_name(fixed, left_out=tuple(axis for axis in SETTING if axis not in fixed))


# ----------------------------------------------------------------------------- which runs


@dataclass(frozen=True, eq=False)
class Sweep:
    kind: str  # temperature | batch_size | imbalance
    axis: str  # the swept setting axis
    fixed: dict  # each other setting axis -> its one value
    runs: pd.DataFrame  # one dataset and augmentation at ``noise_fraction``, every value of axis
    noise_fraction: float
    named: bool  # the grid varies another setting axis too: the stem names ``fixed``

    def stem(self, label: str) -> str:
        return f"{self.kind}_{label}" + (f"-{fixed_name(self.fixed)}" if self.named else "")


def sweeps(runs: pd.DataFrame, grid: dict) -> list[Sweep]:
    """The sweeps to draw from ``runs`` (the runs table rows of one dataset and augmentation):
    per setting axis with two values or more in ``grid``, one per combination of the other two
    axes' values among the runs at the grid's lowest noise fraction (for tau, those of the
    supcon models only). A combination whose runs hold the axis at one value (a run set), or a
    temperature sweep without a supcon model, is skipped and logged."""
    noise = min(float(p) for p in grid["noise_fractions"])
    at = runs[runs["noise_fraction"] == noise]
    found = []
    for axis, kind in SWEEPS.items():
        if not sweeps_axis(grid, axis):
            continue
        others = [a for a in SETTING if a != axis]
        named = any(sweeps_axis(grid, a) for a in others)
        for key, group in at.groupby(others, sort=False):
            fixed = dict(zip(others, key, strict=True))
            where = (f"{kind} figure of {group['dataset'].iloc[0]}/"
                     f"{group['augmentation'].iloc[0]} at {fixed_name(fixed)}")
            if kind == "temperature":  # tau changes the training of the supcon models only
                group = group[group["model"].isin(SUPCON_MODELS)]
            if group.empty:
                log.info("%s: not drawn, no supcon model among its runs", where)
            elif group[axis].nunique() < 2:
                log.info("%s: not drawn, its runs have one %s", where, axis)
            else:
                found.append(Sweep(kind, axis, fixed, group.reset_index(drop=True), noise, named))
    return found


def sweep_jobs(sweep: Sweep, grid: dict) -> list[dict[str, str]]:
    """The grid's jobs (wildcard -> text, the paths' spelling) of the runs ``sweep`` draws."""
    drawn = {Run.of(row) for row in sweep.runs[list(COLUMNS)].to_dict("records")}
    return [job for job in grid_jobs(tuple(GRID_AXES), grid) if Run.of(job) in drawn]


def plot_sweep(sweep: Sweep, free: pd.DataFrame, class_accuracies: pd.DataFrame | None, *,
               dataset: str, num_classes: int, models: list[str], tolerances: dict) -> Figure:
    """The figure of ``sweep``'s kind. ``free``: the free-features records (temperature);
    ``class_accuracies``: per run and test class (imbalance; see :func:`plot_imbalance`);
    ``tolerances``: the ``claims`` keys the temperature figure draws."""
    shown = {"dataset": dataset, "num_classes": num_classes, "models": models}
    if sweep.kind == "temperature":
        return plot_temperature(sweep, free, **shown, tolerances=tolerances)
    if sweep.kind == "batch_size":
        return plot_batch_size(sweep, **shown)
    return plot_imbalance(sweep, class_accuracies, **shown)


# ----------------------------------------------------------------------------- helpers


def by_value(runs: pd.DataFrame, axis: str, column: str) -> pd.DataFrame | None:
    """Per value of ``axis`` (sorted): mean, min and max of ``column`` over the runs (the
    seeds) that have it; None when none has."""
    if column not in runs or runs[column].isna().all():
        return None
    grouped = runs.groupby(axis, sort=True)[column]
    return pd.DataFrame({"mean": grouped.mean(), "low": grouped.min(), "high": grouped.max()})


def _line(ax, runs, axis, column, *, gid, color, ls="-", scale=1.0, band=True, lw=1.4):
    """The seed mean of ``column`` against ``axis`` (a line with ``gid``, so tests find it),
    and the seeds' min-to-max band; the per-value stats, or None if no run has the column."""
    stats = by_value(runs, axis, column)
    if stats is None:
        return None
    x = stats.index.to_numpy(np.float64)
    ax.plot(x, scale * stats["mean"].to_numpy(), color=color, ls=ls, lw=lw, marker="o", ms=4,
            gid=gid)
    if band and len(x) > 0:
        ax.fill_between(x, scale * stats["low"].to_numpy(), scale * stats["high"].to_numpy(),
                        color=color, alpha=0.15, lw=0)
    return stats


def _value_axis(ax, values, base: float = 10) -> None:
    """A log x axis ticked at exactly ``values``."""
    values = sorted(float(v) for v in values)
    ax.set_xscale("log", base=base)
    ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.xaxis.set_minor_locator(NullLocator())


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", style="italic", color="0.4",
            transform=ax.transAxes)


def _colors(models: list[str]) -> dict[str, str]:
    return {m: f"C{i}" for i, m in enumerate(models)}


def _model_legend(fig, models, colors, extra=()) -> None:
    handles = [Line2D([], [], color=colors[m], marker="o", label=model_name(m)) for m in models]
    handles += list(extra)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6),
               fontsize="small")


def _title(sweep: Sweep, dataset: str, num_classes: int, what: str) -> str:
    fixed = ", ".join(f"{SYMBOLS[a]} = {v:g}" for a, v in sweep.fixed.items())
    return (f"{dataset} (K = {num_classes}): {what} at noise fraction {sweep.noise_fraction:g} "
            f"({fixed}); mean over seeds, band: min to max")


# ----------------------------------------------------------------------------- temperature


def final_free_records(free: pd.DataFrame) -> pd.DataFrame:
    """The last record of every free-features supcon run of the grid experiment: one row per
    (K, h, full batch or b, tau)."""
    grid = free[(free["experiment"] == "grid") & (free["loss_name"] == "supcon")]
    keys = ["num_classes", "dim", "full_batch", "batch_size", "temperature"]
    if grid.empty:
        return grid
    return grid.loc[grid.groupby(keys)["iteration"].idxmax()].sort_values(keys)


def plot_temperature(sweep: Sweep, free: pd.DataFrame, *, dataset: str, num_classes: int,
                     models: list[str], tolerances: dict) -> Figure:
    """The temperature sweep: learned representations (top row and bottom left) and free
    features (bottom right). ``tolerances``: the ``claims`` keys simplex_cosine_deviation,
    free_relative_gap and free_cosine_deviation."""
    runs, axis, simplex = sweep.runs, sweep.axis, -1.0 / (num_classes - 1)
    colors = _colors(models)
    drawn = [m for m in models if m in SUPCON_MODELS and (runs["model"] == m).any()]
    tol = float(tolerances["simplex_cosine_deviation"])
    with mpl.rc_context(style()):
        fig = new_figure(15.0, 8.0)
        axes = fig.subplots(2, 4)
        (cos_ax, dev_ax, sample_ax, nc1_ax), (gap_ax, acc_ax, free_gap_ax, free_dev_ax) = axes
        for model in drawn:
            of, c = runs[runs["model"] == model], colors[model]
            _line(cos_ax, of, axis, "class_mean_cosine_mean", gid=f"{model}/class_mean_cosine_mean",
                  color=c)
            nc2 = _line(dev_ax, of, axis, "nc2_simplex_angle_deviation",
                        gid=f"{model}/nc2_simplex_angle_deviation", color=c)
            _line(dev_ax, of, axis, "class_mean_cosine_deviation", band=False, ls="--",
                  gid=f"{model}/class_mean_cosine_deviation", color=c)
            if nc2 is not None:
                reach = nc2[nc2["mean"] < tol]
                dev_ax.plot(reach.index.to_numpy(np.float64), reach["mean"].to_numpy(),
                            ls="none", marker="o", ms=12, mfc="none", mec="tab:green", mew=1.8,
                            gid=f"{model}/reaches_simplex")
            _line(sample_ax, of, axis, "sample_cosine_mean", gid=f"{model}/sample_cosine_mean",
                  color=c)
            _line(nc1_ax, of, axis, "nc1", gid=f"{model}/nc1", color=c)
            _line(gap_ax, of, axis, "final_supcon_gap", gid=f"{model}/final_supcon_gap", color=c)
            _line(acc_ax, of, axis, "test_accuracy_class_mean", scale=100.0, color=c,
                  gid=f"{model}/test_accuracy_class_mean")
            _line(acc_ax, of, axis, "probe_test_accuracy", scale=100.0, color=c, ls=":",
                  band=False, gid=f"{model}/probe_test_accuracy")
        cos_ax.axhline(simplex, color="tab:red", ls="--", lw=1,
                       label=f"simplex -1/(K-1) = {simplex:.4g}")
        cos_ax.legend(fontsize="x-small")
        cos_ax.set_ylabel("mean cosine across class means\n(uncentred)")
        dev_ax.axhline(tol, color="0.4", ls=":", lw=1)
        dev_ax.set_yscale("log")
        dev_ax.set_ylabel("distance to the simplex:\nmean |cos + 1/(K-1)|")
        dev_ax.legend(handles=[
            Line2D([], [], color="0.3", label="centred means (NC2)"),
            Line2D([], [], color="0.3", ls="--", label="uncentred means"),
            Line2D([], [], color="0.4", ls=":", label=f"claims.simplex_cosine_deviation = {tol:g}"),
            Line2D([], [], ls="none", marker="o", ms=10, mfc="none", mec="tab:green", mew=1.8,
                   label="reaches the simplex (NC2 seed mean below)"),
        ], fontsize="x-small")
        sample_ax.axhline(1.0, color="tab:blue", ls=":", lw=1, label="1 (collapse)")
        sample_ax.legend(fontsize="x-small")
        sample_ax.set_ylabel("within-class collapse: mean\ncosine of a sample to its class mean")
        nc1_ax.set_yscale("log")
        nc1_ax.set_ylabel("within-class collapse:\nNC1 tr(Sw Sb+)/K")
        _gap_axis(gap_ax, runs)
        gap_ax.set_ylabel(GAP_REFERENCE + "\n(the optimum of each tau)")
        acc_ax.set_ylabel("test accuracy (%)")
        acc_ax.legend(handles=[Line2D([], [], color="0.3", label="class-mean classifier"),
                               Line2D([], [], color="0.3", ls=":", label="linear probe")],
                      fontsize="x-small")
        for ax in (cos_ax, dev_ax, sample_ax, nc1_ax, gap_ax, acc_ax):
            _value_axis(ax, runs[axis].unique())
            ax.set_xlabel(AXIS_LABELS[axis])
        _free_panels(free_gap_ax, free_dev_ax, final_free_records(free), tolerances)
        _model_legend(fig, drawn, colors)
        fig.suptitle(_title(sweep, dataset, num_classes, "temperature sweep")
                     + "\nbottom right: free features (stage free_features), final records")
    return fig


def _gap_axis(ax, runs: pd.DataFrame) -> None:
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_yscale("symlog", linthresh=1e-3)
    if (runs["imbalance_ratio"] > 1).any():
        ax.set_title(IMBALANCE_NOTE, fontsize="x-small")


def _free_panels(gap_ax, dev_ax, final: pd.DataFrame, tolerances: dict) -> None:
    """Free features: final |relative gap| and max |cos + 1/(K-1)| against tau; colour per
    (K, h), line style per batch (full batch solid)."""
    if final.empty:
        for ax in (gap_ax, dev_ax):
            _no_data(ax, "no free-features\nsupcon records")
        return
    shapes = list(dict.fromkeys(zip(final["num_classes"], final["dim"], strict=True)))
    # (mini-batch, b): the full batch (b = N, which differs with K) first, drawn solid
    batches = sorted({(bool(not full), int(b) if not full else 0)
                      for full, b in zip(final["full_batch"], final["batch_size"], strict=True)})
    styles = ["-", "--", ":", "-."]
    handles = []
    for (k, h), (mini, b) in ((s, bt) for s in shapes for bt in batches):
        of = final[(final["num_classes"] == k) & (final["dim"] == h)
                   & (final["full_batch"] == (not mini))]
        if mini:
            of = of[of["batch_size"] == b]
        if of.empty:
            continue
        name = f"K{k}-h{h}-" + (f"b{b}" if mini else "full")
        # colours C4-C9: apart from the models' C0-C3 in the panels beside
        kw = {"color": f"C{4 + shapes.index((k, h)) % 6}",
              "ls": styles[batches.index((mini, b)) % 4],
              "marker": "o", "ms": 4, "lw": 1.2}
        tau = of["temperature"].to_numpy(np.float64)
        gap = np.maximum(np.abs(of["relative_gap"].to_numpy(np.float64)), 1e-17)
        gap_ax.plot(tau, gap, gid=f"free/{name}/relative_gap", **kw)
        dev_ax.plot(tau, of["class_mean_cosine_deviation"].to_numpy(np.float64),
                    gid=f"free/{name}/class_mean_cosine_deviation", **kw)
        handles.append(Line2D([], [], label=f"K = {k}, h = {h}, "
                              + (f"b = {b}" if mini else "full batch"), **kw))
    for ax, key, label in (
        (gap_ax, "free_relative_gap", "free features: final\n|loss - optimum| / optimum"),
        (dev_ax, "free_cosine_deviation", "free features: final\nmax |cos + 1/(K-1)| over pairs"),
    ):
        ax.axhline(float(tolerances[key]), color="0.4", ls=":", lw=1,
                   label=f"claims.{key} = {float(tolerances[key]):g}")
        ax.set_yscale("log")
        ax.set_ylabel(label)
        _value_axis(ax, final["temperature"].unique())
        ax.set_xlabel(AXIS_LABELS["temperature"])
    gap_ax.legend(fontsize="xx-small")
    dev_ax.legend(handles=handles + dev_ax.get_legend_handles_labels()[0], fontsize="xx-small")


# ----------------------------------------------------------------------------- batch size


def plot_batch_size(sweep: Sweep, *, dataset: str, num_classes: int,
                    models: list[str]) -> Figure:
    """The batch-size sweep, every model: gap and optimum (both per b), simplex distance,
    within-class collapse, test accuracy."""
    runs, axis = sweep.runs, sweep.axis
    colors = _colors(models)
    drawn = [m for m in models if (runs["model"] == m).any()]
    with mpl.rc_context(style()):
        fig = new_figure(12.5, 7.6)
        axes = fig.subplots(2, 3)
        (gap_ax, opt_ax, dev_ax), (sample_ax, acc_ax, key_ax) = axes
        for model in drawn:
            of, c = runs[runs["model"] == model], colors[model]
            for ax, column in ((gap_ax, "final_supcon_gap"), (opt_ax, "supcon_optimum"),
                               (dev_ax, "nc2_simplex_angle_deviation"),
                               (sample_ax, "sample_cosine_mean"),
                               (acc_ax, "test_accuracy_class_mean")):
                _line(ax, of, axis, column, gid=f"{model}/{column}", color=c,
                      scale=100.0 if ax is acc_ax else 1.0)
            _line(dev_ax, of, axis, "class_mean_cosine_deviation", ls="--", band=False,
                  gid=f"{model}/class_mean_cosine_deviation", color=c)
            _line(acc_ax, of, axis, "test_accuracy_head", ls="--", band=False, scale=100.0,
                  gid=f"{model}/test_accuracy_head", color=c)
        _gap_axis(gap_ax, runs)
        gap_ax.set_ylabel(GAP_REFERENCE + "\n(the optimum of each b)")
        opt_ax.set_ylabel("that optimum: expected supcon loss\nat the simplex, batches of b "
                          "(nats)")
        dev_ax.set_yscale("log")
        dev_ax.set_ylabel("distance to the simplex:\nmean |cos + 1/(K-1)|")
        sample_ax.axhline(1.0, color="tab:blue", ls=":", lw=1)
        sample_ax.set_ylabel("mean cosine of a sample\nto its class mean (1: collapse)")
        acc_ax.set_ylabel("test accuracy (%)")
        for ax in (gap_ax, opt_ax, dev_ax, sample_ax, acc_ax):
            _value_axis(ax, runs[axis].unique(), base=2)
            ax.set_xlabel(AXIS_LABELS[axis])
        key_ax.axis("off")
        key_ax.legend(handles=[
            *(Line2D([], [], color=colors[m], marker="o", label=model_name(m)) for m in drawn),
            Line2D([], [], color="0.3", label="distance: centred means (NC2)"),
            Line2D([], [], color="0.3", ls="--", label="distance: uncentred means"),
            Line2D([], [], color="0.3", label="accuracy: class-mean classifier"),
            Line2D([], [], color="0.3", ls="--", label="accuracy: head (CE models)"),
        ], loc="center", fontsize="small")
        fig.suptitle(_title(sweep, dataset, num_classes, "batch-size sweep"))
    return fig


# ----------------------------------------------------------------------------- imbalance


def plot_imbalance(sweep: Sweep, class_accuracies: pd.DataFrame, *, dataset: str,
                   num_classes: int, models: list[str]) -> Figure:
    """The class-imbalance sweep, every model. ``class_accuracies``: one row per run and test
    class (the identity columns, ``class``, ``accuracy``), from each run's metrics.json."""
    runs, axis, simplex = sweep.runs, sweep.axis, -1.0 / (num_classes - 1)
    colors = _colors(models)
    drawn = [m for m in models if (runs["model"] == m).any()]
    minority = set(np.flatnonzero(minority_classes(num_classes)).tolist())
    columns = max(3, len(drawn))
    with mpl.rc_context(style()):
        fig = new_figure(0.6 + 3.6 * columns, 7.8)
        axes = fig.subplots(2, columns, squeeze=False)
        cos_ax, head_ax, gap_ax = axes[0, :3]
        for ax in axes[0, 3:]:
            ax.axis("off")
        heads = []
        for model in drawn:
            of, c = runs[runs["model"] == model], colors[model]
            for group, ls in GROUPS:
                _line(cos_ax, of, axis, f"class_mean_cosine_{group}", ls=ls, color=c,
                      gid=f"{model}/class_mean_cosine_{group}")
                if _line(head_ax, of, axis, f"head_cosine_{group}", ls=ls, color=c,
                         gid=f"{model}/head_cosine_{group}") is not None and model not in heads:
                    heads.append(model)
            if model in SUPCON_MODELS:
                _line(gap_ax, of, axis, "final_supcon_gap", gid=f"{model}/final_supcon_gap",
                      color=c)
        for ax in (cos_ax, head_ax):
            ax.axhline(simplex, color="tab:red", ls="--", lw=1)
        head_ax.axhline(1.0, color="tab:blue", ls=":", lw=1)
        if not heads:
            _no_data(head_ax, "no CE model")
        cos_ax.set_ylabel("mean cosine of the centred\nclass means, by class group")
        head_ax.set_ylabel("mean cosine of the head rows, by\nclass group (CE; 1: minority "
                           "collapse)")
        group_handles = [Line2D([], [], color="0.3", ls=ls, label=f"within the {g}"
                                if g != "across" else "across the groups") for g, ls in GROUPS]
        cos_ax.legend(handles=[*group_handles, Line2D([], [], color="tab:red", ls="--",
                               label=f"simplex -1/(K-1) = {simplex:.4g}")], fontsize="x-small")
        _gap_axis(gap_ax, runs)
        gap_ax.set_ylabel(GAP_REFERENCE + "\n(supcon models)")
        if not any(m in SUPCON_MODELS for m in drawn):
            _no_data(gap_ax, "no supcon model")
        for col in range(columns):
            ax = axes[1, col]
            if col >= len(drawn):
                ax.axis("off")
                continue
            _class_panel(ax, sweep, class_accuracies, drawn[col], colors[drawn[col]], minority)
        for ax in [cos_ax, head_ax, gap_ax, *axes[1, :len(drawn)]]:
            _value_axis(ax, runs[axis].unique())
            ax.set_xlabel(AXIS_LABELS[axis])
        _model_legend(fig, drawn, colors)
        fig.suptitle(_title(sweep, dataset, num_classes, "class-imbalance sweep")
                     + f"\nminority: the last {num_classes // 2} classes")
    return fig


def _class_panel(ax, sweep: Sweep, class_accuracies: pd.DataFrame, model: str, color: str,
                 minority: set[int]) -> None:
    """One model's per-class test accuracy against rho, in the model's colour: a thin line
    per class (mean over seeds), bold the group means (the runs table's
    test_accuracy_<group>); majority solid, minority dashed."""
    axis = sweep.axis
    of = class_accuracies[class_accuracies["model"] == model]
    per_class = of.groupby(["class", axis], sort=True)["accuracy"].mean()
    ls = dict(GROUPS)
    for c in sorted(of["class"].unique()):
        line = per_class.loc[c]
        ax.plot(line.index.to_numpy(np.float64), 100 * line.to_numpy(np.float64), lw=0.7,
                alpha=0.6, color=color, ls=ls["minority" if c in minority else "majority"],
                gid=f"{model}/class{c}")
    runs = sweep.runs[sweep.runs["model"] == model]
    for group in ("majority", "minority"):
        _line(ax, runs, axis, f"test_accuracy_{group}", scale=100.0, band=False, lw=2.8,
              ls=ls[group], color=color, gid=f"{model}/test_accuracy_{group}")
    ax.set_title(model_name(model), fontsize="medium")
    ax.set_ylabel("test accuracy per class (%),\nclass-mean classifier")
    ax.legend(handles=[Line2D([], [], color="0.3", lw=2.8, ls=ls[g], label=f"{g} mean")
                       for g in ("majority", "minority")]
              + [Line2D([], [], color="0.3", lw=0.7, label="one class")], fontsize="x-small")
