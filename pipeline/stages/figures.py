"""Stage ``figures``: the paper's plots, per dataset of the grid, as PNG and PDF.

- ``geometry_{dataset}``: Section 5.2. Per model, the distributions (pooled over seeds, at
  noise fraction ``figures.geometry_noise``) of the cosine similarity across class means, of
  each sample to its class mean and across head weights, against the regular-simplex value
  -1/(K-1) and 1 (collapse).
- ``iterations_to_fit_{dataset}``: Section 5.3. Iterations to fit the (noisy) training labels
  against the noise fraction p per model, with every seed shown, runs that never fit marked at
  the top, the censored growth fit c * p^a with its exponent, 95% bootstrap interval and
  band, read from growth.json as the aggregate stage wrote it (never refitted here).
- ``gap_vs_accuracy_{dataset}``: claim (iii), one point per run: the final supcon gap to its
  sampler-expected optimum (tracked for ce models) and each model's own loss gap, against
  test accuracy.
- ``collapse_{dataset}``: NC1-NC4 and the test accuracies of the class-mean classifier, the
  head and the linear probe against the noise fraction, mean over seeds.
- ``training_curves_{dataset}``: loss, train accuracy on the labels trained on, and test
  accuracy of the class-mean classifier over iterations, mean over seeds.

Beyond the paper, drawn only for a setting axis the grid gives two values or more (so the
paper's protocol draws none), per dataset and augmentation (pipeline/report/sweep_plots.py):
``temperature_*`` (supcon's geometry, gap and accuracy against tau, and the free features'
final gap and simplex distance), ``batch_size_*`` (gap, optimum, geometry, accuracy against b)
and ``imbalance_*`` (cosines by class group, head cosines, per-class accuracy against rho).

Each file carries a provenance record in its metadata (pipeline/infra/provenance.py: params,
code and input md5s), which ``python -m pipeline lineage <figure>`` reads back.

Figures are built with the object-oriented API (``matplotlib.figure.Figure``, rendered by the
Agg and PDF canvases), never pyplot, so no global figure state or GUI backend is involved,
and under matplotlib's default rc settings, so a user's matplotlibrc cannot change the bytes.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import pyarrow as pa
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pipeline.infra import inputs, numerics, provenance, schemas, stage_table
from pipeline.infra.grid import RECORD_KEY as grid_record
from pipeline.infra.grid import differences as grid_differences
from pipeline.infra.io import InputError, atomic_dir, read_metadata, read_parquet
from pipeline.infra.runs import COLUMN_TYPES, COLUMNS, Run, setting_name, with_setting
from pipeline.report import sweep_plots
from pipeline.report.paper_plots import (
    plot_collapse,
    plot_gap_vs_accuracy,
    plot_geometry,
    plot_training_curves,
)
from pipeline.report.plotting import new_figure, save_figure, style
from pipeline.report.sweep_plots import model_name
from pipeline.stages.aggregate import (
    check_run_files,
    load_train_logs,
    per_run_files,
    read_run_metrics,
)

log = logging.getLogger(__name__)

COSINE_KINDS = schemas.COSINE_KINDS
RUNS_COLUMNS = {name: {str: pa.string(), float: pa.float64(), int: pa.int64()}[kind]
                for name, kind in COLUMN_TYPES.items()}
COSINES_COLUMNS = {f.name: f.type for f in schemas.COSINES}


# ----------------------------------------------------------------------------- inputs


def load_runs_table(path: Path, grid: dict) -> pd.DataFrame:
    """The aggregate stage's runs table, checked to hold every run of ``grid``."""
    table = read_parquet(path, RUNS_COLUMNS).to_pandas()
    for column in ("num_classes", "iterations_to_fit"):
        if column not in table:
            raise InputError(f"{path}: missing column {column!r} (has {list(table.columns)})")
    keys = list(table[list(RUNS_COLUMNS)].itertuples(index=False, name=None))
    wanted = {}
    for job in stage_table.grid_jobs(stage_table.GEOMETRY, grid):
        wanted[tuple(Run.of(job).columns().values())] = job
    present = set(keys)
    for key, job in wanted.items():
        if key not in present:
            raise InputError(f"{path}: no row for run {job} of the grid (rerun aggregate)")
    # Rows of runs outside the grid (a stale table) are not drawn.
    return table[[key in wanted for key in keys]].reset_index(drop=True)


def load_cosines(geometry_dir: Path, grid: dict, noise_fraction: float) -> pd.DataFrame:
    """The cosine distributions of the grid's runs at ``noise_fraction``, one row per value:
    kind, value and the run's identity columns."""
    frames = []
    for job in _jobs_at_noise(grid, noise_fraction):
        path = stage_table.run_file(stage_table.COSINES, geometry_dir, **job)
        frame = read_parquet(path, COSINES_COLUMNS).to_pandas()
        unknown = sorted(set(frame["kind"]) - set(COSINE_KINDS))
        if unknown:
            raise InputError(f"{path}: unknown cosine kind(s) {unknown} (known: {COSINE_KINDS})")
        frames.append(frame.assign(**Run.of(job).columns()))
    return pd.concat(frames, ignore_index=True)


def _jobs_at_noise(grid: dict, noise_fraction: float) -> list[dict[str, str]]:
    jobs = [
        job
        for job in stage_table.grid_jobs(stage_table.GEOMETRY, grid)
        if float(job["noise_fraction"]) == float(noise_fraction)
    ]
    if not jobs:
        raise ValueError(
            f"figures.geometry_noise: {noise_fraction} is not one of grid.noise_fractions "
            f"{grid['noise_fractions']}"
        )
    return jobs


def num_classes_of(runs: pd.DataFrame, dataset: str) -> int:
    values = runs.loc[runs["dataset"] == dataset, "num_classes"].dropna().unique()
    if len(values) != 1:
        raise InputError(f"runs table: dataset {dataset!r} has num_classes {sorted(values)}")
    return int(values[0])


def load_class_accuracies(files: dict[str, Path], jobs: list[dict[str, str]]) -> pd.DataFrame:
    """Per run of ``jobs`` (its metrics.json in ``files``, in the same order) and test class:
    the class-mean classifier's accuracy (``test_accuracy_by_class``; NaN: no test sample)."""
    rows = []
    for path, job in zip(files.values(), jobs, strict=True):
        by_class = read_run_metrics(Path(path), job).get("test_accuracy_by_class")
        if not isinstance(by_class, list):
            raise InputError(f"{path}: no list test_accuracy_by_class (rerun geometry)")
        rows += [{**Run.of(job).columns(), "class": c, "accuracy": np.nan if a is None else a}
                 for c, a in enumerate(by_class)]
    return pd.DataFrame(rows, columns=[*COLUMNS, "class", "accuracy"])


# ----------------------------------------------------------------------------- analysis


def iterations_by_noise(runs: pd.DataFrame) -> pd.DataFrame:
    """Per noise fraction of one model: mean and sample std of iterations_to_fit over the
    seeds that fit, and how many seeds fit out of how many."""
    iterations = runs["iterations_to_fit"].astype(np.float64)
    grouped = iterations.groupby(runs["noise_fraction"], sort=True)
    return pd.DataFrame(
        {
            "mean": grouped.mean(),
            "std": grouped.std(ddof=1),
            "n_fit": grouped.count(),
            "n_seeds": grouped.size(),
        }
    ).reset_index()


# ----------------------------------------------------------------------------- figures


def plot_iterations_to_fit(
    runs: pd.DataFrame, *, dataset: str, num_classes: int, models: list[str], fits: dict
) -> Figure:
    """Section 5.3: iterations to fit vs noise fraction; mean +- std over the seeds that fit,
    every seed as a dot, seeds that never fit as an x on the line at the top; ``fits``: model
    -> its growth fit as growth.json holds it (exponent, interval, band)."""
    runs = runs[runs["dataset"] == dataset]
    iterations = runs["iterations_to_fit"].astype(np.float64)
    top = _not_fit_level(runs, iterations)
    noise_values = np.sort(runs["noise_fraction"].unique())
    dodge = 0.006 * (noise_values.max() - noise_values.min() or 1.0)  # keep models apart
    with mpl.rc_context(style()):
        fig = new_figure(7.0, 4.8)
        ax = fig.subplots()
        any_not_fit = False
        for i, model in enumerate(models):
            shift = (i - (len(models) - 1) / 2) * dodge
            of_model = runs[runs["model"] == model]
            any_not_fit |= _plot_model_iterations(ax, of_model, model, fits.get(model, {}),
                                                  f"C{i}", shift, top)
        handles, labels = ax.get_legend_handles_labels()
        if any_not_fit:
            ax.axhline(top, color="0.5", lw=0.8, ls=":")
            handles.append(Line2D([], [], ls="none", marker="x", mew=2, color="0.3"))
            labels.append(f"not fit (shown at {top:.4g})")
        handles.append(Line2D([], [], ls="none", marker=".", color="0.3"))
        labels.append("single seed")
        ax.legend(handles, labels, loc="upper left", fontsize="small")
        ax.set_xlabel("noise fraction p (fraction of training labels flipped)")
        ax.set_ylabel("iterations to fit (SGD steps)")
        ax.set_ylim(bottom=0)
        ax.set_title(
            f"{dataset} (K = {num_classes}): iterations to fit noisy labels, "
            "mean ± std over seeds that fit"
        )
    return fig


def _plot_model_iterations(
    ax, runs: pd.DataFrame, model: str, fit: dict, color: str, shift: float, top: float
) -> bool:
    """One model's mean +- std, seed dots, not-fit crosses at ``top``, the censored power-law
    ``fit`` (growth.json's) and its bootstrap band; ``shift`` moves the markers sideways
    (noise units). True if any run never fit."""
    stats = iterations_by_noise(runs)
    exponent, coefficient = fit.get("exponent"), fit.get("coefficient")
    ci, band = fit.get("exponent_ci95"), fit.get("band")
    label = model_name(model) + (": a = n/a" if exponent is None else
                                 f": a = {exponent:.2f} (iters ~ {coefficient:.3g} "
                                 f"p^{exponent:.2f})")
    if ci is not None:
        label += f", 95% CI [{ci[0]:.2f}, {ci[1]:.2f}]"
    p = stats["noise_fraction"].to_numpy()
    ax.errorbar(
        p + shift,
        stats["mean"],
        yerr=stats["std"].fillna(0.0),
        color=color,
        marker="o",
        capsize=3,
        label=label,
    )
    iterations = runs["iterations_to_fit"].astype(np.float64)
    fit_rows = iterations.notna().to_numpy()
    noise = runs["noise_fraction"].to_numpy()
    ax.plot(
        noise[fit_rows] + shift, iterations[fit_rows], ls="none", marker=".", color=color, alpha=0.5
    )
    not_fit = noise[~fit_rows]
    if not_fit.size:  # never dropped: drawn as crosses at the training length
        x = not_fit + shift
        ax.plot(x, np.full(x.size, top), ls="none", marker="x", ms=8, mew=2, color=color)
    if exponent is not None:
        curve = np.linspace(p[p > 0].min(), p.max(), 100)
        ax.plot(curve, coefficient * curve**exponent, color=color, ls="--", lw=0.8)
    if band is not None:  # pointwise 95% bootstrap band of the fitted curve
        ax.fill_between(band["noise_fraction"], band["lower"], band["upper"], color=color,
                        alpha=0.12, lw=0)
    return bool(not_fit.size)


def _not_fit_level(runs: pd.DataFrame, iterations: pd.Series) -> float:
    """Where a run that never fit is drawn: at the training length (it had not fit by then),
    else just above the slowest run that did."""
    if "final_iteration" in runs and runs["final_iteration"].notna().any():
        return float(runs["final_iteration"].max())
    return 1.1 * float(iterations.max()) if iterations.notna().any() else 1.0



def read_growth(path: Path, grid: dict, runs: Path) -> dict:
    """growth.json: dataset -> augmentation -> setting -> model -> fit (aggregate's), checked
    to have been fitted for ``grid`` (the grid of params.yaml the figures are drawn for),
    from the runs table ``runs`` (the md5 it records)."""
    try:
        fits = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable growth fits ({e})") from e
    fits.pop(numerics.METADATA_KEY, None)
    mismatch = grid_differences(fits.pop(grid_record, None), grid)
    if mismatch:
        raise InputError(f"{path}: growth fits made for another grid than params' (rerun "
                         "aggregate): " + "; ".join(mismatch))
    inputs.check_made_from(path, fits, "runs", runs)
    fits.pop(inputs.KEY)
    return fits


def run_files(pattern: str, directory: Path, jobs: list[dict[str, str]]) -> dict[str, Path]:
    """Each job's file of ``pattern``: project-layout path -> the file in ``directory``."""
    return {stage_table.fill(pattern, **job): stage_table.run_file(pattern, directory, **job)
            for job in jobs}


def figure_inputs(
    grid: dict, dataset: str, augmentation: str, setting: str, noise: float, *, runs: Path,
    growth: Path, geometry_dir: Path, train_log_dir: Path,
) -> dict[str, dict[str, Path]]:
    """Per figure kind, the files it is drawn from: project-layout path -> file read. Every
    figure reads the runs table (for K); the record names exactly these, never a whole
    directory, so the figure's lineage follows only the runs it shows."""
    of_dataset = [job for job in stage_table.grid_jobs(stage_table.TRAIN, grid)
                  if (job["dataset"], job["augmentation"], setting_name(Run.of(job).columns()))
                  == (dataset, augmentation, setting)]
    table = {stage_table.RUNS_TABLE: Path(runs)}
    at_noise = [job for job in of_dataset if float(job["noise_fraction"]) == noise]
    return {
        "geometry": table | run_files(stage_table.COSINES, geometry_dir, at_noise),
        "iterations_to_fit": table | {stage_table.GROWTH_METRICS: Path(growth)},
        "gap_vs_accuracy": dict(table),
        "collapse": dict(table),
        "training_curves": table | run_files(stage_table.TRAIN_LOG, train_log_dir, of_dataset),
    }


def draw_sweeps(params: dict, directory: Path, run_table: pd.DataFrame,
                free: pd.DataFrame | None, *, runs: Path, geometry_dir: Path,
                free_features: Path | None) -> list[str]:
    """The sweep figures (pipeline/report/sweep_plots.py) of every dataset and augmentation into
    ``directory``, each recording the files it is drawn from; the names of the files written."""
    grid, names = params["grid"], []
    for dataset, augmentation in itertools.product(grid["datasets"], grid["augmentations"]):
        of = run_table[(run_table["dataset"] == dataset)
                       & (run_table["augmentation"] == augmentation)]
        label = dataset if augmentation == "none" else f"{dataset}-{augmentation}"
        for sweep in sweep_plots.sweeps(of, grid):
            read, accuracies = {stage_table.RUNS_TABLE: Path(runs)}, None
            if sweep.kind == "temperature":
                read[stage_table.FREE_FEATURES_TABLE] = Path(free_features)
            if sweep.kind == "imbalance":  # each run's per-class accuracies
                jobs = sweep_plots.sweep_jobs(sweep, grid)
                metrics = run_files(stage_table.GEOMETRY_METRICS, geometry_dir, jobs)
                read, accuracies = read | metrics, load_class_accuracies(metrics, jobs)
            fig = sweep_plots.plot_sweep(
                sweep, free, accuracies, dataset=dataset, num_classes=num_classes_of(of, dataset),
                models=[m for m in grid["models"] if m in set(of["model"])],
                tolerances=params["claims"])
            stem = sweep.stem(label)
            record = provenance.figure_provenance(stage_table.FIGURES, params, stem, read)
            names += [p.name for p in save_figure(fig, directory, stem,
                                                  int(params["figures"]["dpi"]), record)]
    return names


def draw_figures(
    params: dict, *, runs: Path, growth: Path, geometry_dir: Path, train_log_dir: Path,
    figures: Path, free_features: Path | None = None,
) -> list[Path]:
    """Draw the five figures of every dataset, and the sweep figures of a grid that sweeps a
    setting axis, into directory ``figures`` (replaced as a whole); return the paths of the
    files written, in a fixed order. ``free_features``: the free-features table, read by the
    temperature figure only, so given exactly when the grid sweeps tau."""
    grid = params["grid"]
    needed = "free_features" in stage_table.FIGURES.deps_for(grid)
    if needed != (free_features is not None):
        raise InputError(
            f"figures: grid.temperatures is {grid['temperatures']}, so the free-features table "
            f"is {'needed (--free-features)' if needed else 'not read'}; got "
            f"{'none' if free_features is None else free_features}")
    dpi = int(params["figures"]["dpi"])
    noise = float(params["figures"]["geometry_noise"])
    run_table = with_setting(load_runs_table(Path(runs), grid))
    cosines = with_setting(load_cosines(Path(geometry_dir), grid, noise))
    logs = with_setting(load_train_logs(Path(train_log_dir), grid))
    free = None if free_features is None else read_parquet(
        Path(free_features), sweep_plots.FREE_FEATURES_COLUMNS).to_pandas()
    fits = read_growth(Path(growth), grid, Path(runs))
    # the per-run files read beside the runs table are the ones it was made from
    check_run_files(Path(runs), read_metadata(runs),
                    per_run_files(grid, Path(geometry_dir), Path(train_log_dir)))
    settings = list(dict.fromkeys(run_table["setting"]))  # in grid order
    names: list[str] = []
    with atomic_dir(figures) as tmp:
        for dataset, augmentation, setting in itertools.product(
                grid["datasets"], grid["augmentations"], settings):
            k = num_classes_of(run_table, dataset)
            # One set of figures per dataset, augmentation and setting; the unaugmented ones
            # of a one-setting grid keep the plain name (geometry_digits), others name them
            # (geometry_cifar10-standard, geometry_digits-rho1-tau0.5-b256).
            label = dataset if augmentation == "none" else f"{dataset}-{augmentation}"
            if len(settings) > 1:
                label += f"-{setting}"

            def of(frame, augmentation=augmentation, setting=setting):
                return frame[(frame["augmentation"] == augmentation)
                             & (frame["setting"] == setting)]

            runs_of, cosines_of, logs_of = of(run_table), of(cosines), of(logs)
            if runs_of[runs_of["dataset"] == dataset].empty:
                continue  # a run set leaves this setting out for this dataset/augmentation
            present = set(runs_of.loc[runs_of["dataset"] == dataset, "model"])
            models = [m for m in grid["models"] if m in present]
            noise_fractions = sorted(set(runs_of.loc[runs_of["dataset"] == dataset,
                                                     "noise_fraction"]))
            drawn = {
                f"geometry_{label}": plot_geometry(
                    cosines_of, dataset=dataset, num_classes=k, models=models, noise_fraction=noise
                ),
                f"iterations_to_fit_{label}": plot_iterations_to_fit(
                    runs_of, dataset=dataset, num_classes=k, models=models,
                    fits=fits.get(dataset, {}).get(augmentation, {}).get(setting, {}),
                ),
                f"gap_vs_accuracy_{label}": plot_gap_vs_accuracy(
                    runs_of, dataset=dataset, num_classes=k, models=models
                ),
                f"collapse_{label}": plot_collapse(
                    runs_of, dataset=dataset, num_classes=k, models=models
                ),
                f"training_curves_{label}": plot_training_curves(
                    logs_of, dataset=dataset, num_classes=k, models=models,
                    noise_fractions=noise_fractions,
                ),
            }
            read = figure_inputs(
                grid, dataset, augmentation, setting, noise, runs=runs, growth=growth,
                geometry_dir=geometry_dir, train_log_dir=train_log_dir,
            )
            for stem, fig in drawn.items():
                kind = stem.removesuffix(f"_{label}")
                record = provenance.figure_provenance(stage_table.FIGURES, params, stem, read[kind])
                names += [p.name for p in save_figure(fig, tmp, stem, dpi, record)]
        names += draw_sweeps(params, tmp, run_table, free, runs=runs, geometry_dir=geometry_dir,
                             free_features=free_features)
    log.info("wrote %d figure files to %s", len(names), figures)
    return [Path(figures) / name for name in names]
