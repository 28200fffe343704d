"""Stage ``aggregate``: gather every run's geometry metrics into one table, then summarise
them across seeds per grid point (every identity column but the seed).

The runs are exactly those of ``params.yaml: grid`` (never whatever lies on disk), so a stale
run folder left over from an earlier grid cannot leak into the summary, and a missing one is
an error naming its path.

Outputs:
- ``runs``: one row per run, its identity columns (pipeline/infra/runs.py) first and sorted by
  them, each in its grid axis's order;
- ``summary`` (Parquet) and ``summary_csv``: per grid point (the identity but the seed),
  every numeric metric's ``<metric>_mean`` and ``<metric>_std`` (sample
  std, ddof=1, so NaN with one seed) plus ``n_seeds``. ``iterations_to_fit`` is null for a
  run that never fit: its mean and std are over the seeds that fit and ``n_fit`` counts
  them. Every other metric is averaged over all seeds, so a null in any seed gives a null
  mean (nothing is silently averaged over fewer seeds).
- ``curves`` (CSV): every training log of the grid stacked, one row per evaluation, the run's
  identity columns first: the data of `dvc plots show`'s training curves (DVC cannot read
  Parquet) and of the training-curves figures.
- ``growth`` (JSON): per dataset, augmentation, setting (imbalance ratio,
  temperature and batch size: ``runs.setting_name``) and model, the fitted exponent a
  of iterations-to-fit ~ c p^a across the noise fractions p > 0 (docs/paper.md: "a fitted exponent
  per loss"), fitted over the runs with those that never fit right-censored at their last
  evaluation, its 95% bootstrap interval and the "superlinear" verdict that follows from it;
  the same fit the iterations-to-fit figure draws; see :func:`growth_exponents`; under
  ``grid`` the grid they were fitted for, as the runs table's metadata records it, so a
  reader can tell a growth.json of another run from the right one.
- ``headline`` (JSON, DVC metrics): a few numbers per dataset and model, flat and named so
  that a column of `dvc exp show` explains itself (:func:`headline_of`); the per-run
  metrics.json stay outputs, not DVC metrics, so a comparison is not thousands of columns.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.infra import inputs, schemas, stage_table
from pipeline.infra.grid import RECORD_KEY as grid_record
from pipeline.infra.grid import grid_axis
from pipeline.infra.io import (
    InputError,
    atomic_path,
    file_md5,
    read_parquet,
    write_json,
    write_parquet,
)
from pipeline.infra.runs import (
    COLUMN_TYPES,
    COLUMNS,
    SETTING,
    STRING_COLUMNS,
    Run,
    setting_name,
    with_setting,
)
from pipeline.maths import statistics

# Keys naming the run; the rest of metrics.json is metrics.
ID_COLUMNS = COLUMNS  # a run's identity (pipeline/infra/runs.py), first in every table
GROUP_COLUMNS = tuple(c for c in COLUMNS if c != "seed")  # a grid point: seeds vary
FIT_METRIC = "iterations_to_fit"  # null = never reached the fit threshold
log = logging.getLogger(__name__)

CSV_FLOAT_FORMAT = "%.10g"  # fixed formatting: equal numbers -> equal CSV bytes
TRAIN_LOG_COLUMNS = {f.name: f.type for f in schemas.TRAIN_LOG}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value: object) -> str:
    """One of null, int, float or other (a string, list or bool: not a metric)."""
    if value is None:
        return "null"
    if not _is_number(value):
        return "other"
    return "int" if isinstance(value, int) else "float"


def read_run_metrics(path: Path, job: dict[str, str]) -> dict:
    """One run's metrics.json, checked to be a JSON object naming the run ``job`` is."""
    if not path.exists():
        raise InputError(f"{path}: missing input file (run {job})")
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable or truncated JSON ({e})") from e
    if not isinstance(metrics, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(metrics).__name__}")
    missing = [key for key in ID_COLUMNS if metrics.get(key) is None]
    if missing:
        raise InputError(f"{path}: missing key(s) {missing}")
    for key, want in Run.of(job).columns().items():
        got = metrics[key]
        same = got == want if isinstance(want, str) else _is_number(got) and got == want
        if not same:
            raise InputError(f"{path}: {key} is {got!r} but the path says {want!r}")
    return metrics


def _metric_types(records: list[dict], paths: list[Path]) -> dict[str, pa.DataType]:
    """Numeric metric keys in first-seen order -> int64 (integers, never null) or float64.

    Keys whose values are all non-numeric (strings, lists) are not metrics and are left out;
    a key numeric in one run and not in another is an error naming both files.
    """
    kinds: dict[str, set[str]] = {}
    first_path: dict[tuple[str, str], Path] = {}
    for metrics, path in zip(records, paths, strict=True):
        for key, value in metrics.items():
            if key in ID_COLUMNS:
                continue
            kind = _kind(value)
            kinds.setdefault(key, set()).add(kind)
            first_path.setdefault((key, kind), path)
    types: dict[str, pa.DataType] = {}
    for key, seen in kinds.items():
        if "other" in seen and seen - {"other", "null"}:
            number_kind = sorted(seen - {"other", "null"})[0]
            raise InputError(
                f"{key!r} is numeric in {first_path[(key, number_kind)]} but not in "
                f"{first_path[(key, 'other')]}"
            )
        if "other" in seen:
            continue
        types[key] = pa.int64() if seen == {"int"} else pa.float64()
    # A key present in only some runs is null in the others, hence float64.
    for key, dtype in types.items():
        if dtype == pa.int64() and any(key not in m for m in records):
            types[key] = pa.float64()
    return types


class RunMetrics(NamedTuple):
    job: dict[str, str]
    path: Path
    metrics: dict  # the file's content, checked by read_run_metrics


def read_grid_metrics(grid: dict, geometry_dir: Path) -> list[RunMetrics]:
    """Every run's metrics.json of ``grid``, in grid order, each read (and checked) once."""
    found = []
    for job in stage_table.grid_jobs(stage_table.GEOMETRY, grid):
        path = stage_table.run_file(stage_table.GEOMETRY_METRICS, geometry_dir, **job)
        found.append(RunMetrics(job, path, read_run_metrics(path, job)))
    return found


def load_runs(grid: dict, grid_metrics: list[RunMetrics]) -> pd.DataFrame:
    """Every run of ``grid`` (its metrics files: :func:`read_grid_metrics`) as one row: the
    identity columns, then each numeric metric."""
    records = [run.metrics for run in grid_metrics]
    types = _metric_types(records, [run.path for run in grid_metrics])
    columns: dict[str, object] = {}
    for name in ID_COLUMNS:
        values = [m[name] for m in records]
        columns[name] = (pd.Series(values, dtype=object) if name in STRING_COLUMNS
                         else np.array(values, dtype=COLUMN_TYPES[name]))
    for key, dtype in types.items():
        values = [m.get(key) for m in records]
        if dtype == pa.int64():
            columns[key] = np.array(values, dtype=np.int64)
        else:
            columns[key] = np.array([np.nan if v is None else v for v in values], np.float64)
    runs = pd.DataFrame(columns)
    # Each identity column in its axis's order (lexsort's last key is the primary one).
    ranks = []
    for name in reversed(ID_COLUMNS):
        kind = COLUMN_TYPES[name]
        rank = {kind(value): i for i, value in enumerate(grid[grid_axis(name)])}
        ranks.append(runs[name].map(lambda v, rank=rank, kind=kind: rank[kind(v)]).to_numpy())
    return runs.iloc[np.lexsort(ranks)].reset_index(drop=True)


def growth_of(runs: pd.DataFrame) -> statistics.GrowthFit:
    """The censored growth fit (pipeline.maths.statistics) of one model's runs: a run that never
    fit is censored at its last evaluation (it needs more steps than it was given)."""
    iterations = runs[FIT_METRIC].astype(np.float64).to_numpy()
    censored = np.isnan(iterations)
    at = np.where(censored, runs["final_iteration"].astype(np.float64).to_numpy(), iterations)
    return statistics.growth_fit(runs["noise_fraction"].to_numpy(np.float64), at, censored)


def growth_exponents(runs: pd.DataFrame) -> dict:
    """``{dataset: {augmentation: {setting: {model: fit}}}}`` of iterations-to-fit against
    noise, ``setting`` as :func:`pipeline.infra.runs.setting_name` spells it.

    Each fit (:func:`growth_of`): ``exponent`` a and ``coefficient`` c of c p^a (null when
    fewer than two noise fractions p > 0 have a run, or all their runs are censored),
    ``sigma`` (spread of log iterations about the fit), ``exponent_ci95``, ``superlinear``
    ("yes" when the whole interval lies above 1, "no" when below, else "inconclusive"),
    ``runs_used`` (p > 0) and ``runs_not_fit`` of those, counted in the fit, not dropped, and
    ``band``: the pointwise 95% bootstrap band of the curve (``noise_fraction``, ``lower``,
    ``upper``), which the figures stage draws as it is, without refitting.
    """
    if FIT_METRIC not in runs or "final_iteration" not in runs:
        raise InputError(f"the runs carry no {FIT_METRIC!r} metric: no growth to fit")
    growth: dict = {}
    for key, group in runs.groupby(["dataset", "augmentation", *SETTING, "model"], sort=False):
        dataset, augmentation, model = key[0], key[1], key[-1]
        setting = setting_name(dict(zip(SETTING, key[2:-1], strict=True)))
        fit = growth_of(group)
        of_setting = growth.setdefault(dataset, {}).setdefault(augmentation, {})
        of_setting.setdefault(setting, {})[model] = {
            "exponent": fit.exponent,
            "coefficient": fit.coefficient,
            "sigma": fit.sigma,
            "exponent_ci95": None if fit.ci95 is None else list(fit.ci95),
            "superlinear": statistics.verdict_above(fit.ci95, 1.0),
            "runs_used": fit.runs,
            "runs_not_fit": fit.censored,
            "bootstrap_resamples": statistics.RESAMPLES,
            # the pointwise 95% band of c p^a the iterations figure draws (null without a fit)
            "band": None if fit.band is None else dict(
                zip(("noise_fraction", "lower", "upper"), map(list, fit.band), strict=True)),
        }
    return growth


def per_run_files(grid: dict, geometry_dir: Path, train_log_dir: Path) -> dict[str, dict]:
    """The per-run files a runs table is made from: kind (its ``inputs`` key) -> run name ->
    path, in grid order."""
    jobs = stage_table.grid_jobs(stage_table.GEOMETRY, grid)
    kinds = {"metrics": (stage_table.GEOMETRY_METRICS, geometry_dir),
             "train_logs": (stage_table.TRAIN_LOG, train_log_dir)}
    return {kind: {Run.of(job).name: stage_table.run_file(pattern, directory, **job)
                   for job in jobs}
            for kind, (pattern, directory) in kinds.items()}


def run_inputs(grid: dict, grid_metrics: list[RunMetrics], geometry_dir: Path,
               train_log_dir: Path) -> dict[str, dict]:
    """The md5 of every run's metrics.json and training log, by run name, as the runs table
    records them (``inputs``); each metrics.json (``grid_metrics``: as read) must have been
    measured on the training log read beside it (the md5 it records), not on another
    training of the same run."""
    files = per_run_files(grid, geometry_dir, train_log_dir)
    made_from = {kind: {name: file_md5(path) for name, path in by_run.items()}
                 for kind, by_run in files.items()}
    for job, path, metrics in grid_metrics:
        name = Run.of(job).name
        inputs.check_made_from(path, metrics, "train_log", files["train_logs"][name],
                               md5=made_from["train_logs"][name])
    return made_from


def check_run_files(runs: Path, runs_meta: dict, files: dict[str, dict[str, Path]]) -> None:
    """Per-run files read beside the runs table (``files``: :func:`per_run_files`) are the
    ones it was made from (the md5s it records, :func:`run_inputs`)."""
    for kind, by_run in files.items():
        for name, path in by_run.items():
            inputs.check_made_from(runs, runs_meta, f"{kind} of run {name}", path,
                                   at=inputs.field(kind, name))


def load_train_logs(train_log_dir: Path, grid: dict) -> pd.DataFrame:
    """Every training log of the grid, stacked in grid order, the run's identity first."""
    frames = []
    for job in stage_table.grid_jobs(stage_table.TRAIN, grid):
        path = stage_table.run_file(stage_table.TRAIN_LOG, train_log_dir, **job)
        frame = read_parquet(path, TRAIN_LOG_COLUMNS).to_pandas()
        for position, (name, value) in enumerate(Run.of(job).columns().items()):
            frame.insert(position, name, value)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# The headline (headline.json, the project's DVC metrics beside the claims' verdicts): per
# dataset and model, at the group's lowest noise fraction, the seeds' mean of these summary
# columns under these names; then the growth exponent and its interval.
HEADLINE_COLUMNS = {
    "test_accuracy_class_means": "test_accuracy_class_mean_mean",
    "test_accuracy_probe": "probe_test_accuracy_mean",
    "collapse_cosine": "sample_cosine_mean_mean",
    "nc1": "nc1_mean",
    "simplex_deviation": "nc2_simplex_angle_deviation_mean",
}


def _finite(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def headline_of(summary: pd.DataFrame, growth: dict) -> dict:
    """The few numbers a comparison of experiments starts from, flat under
    "<data>/<model>/<name>": <data> the dataset, followed by the augmentation and the setting
    when the grid holds several for it (names of :data:`HEADLINE_COLUMNS`, then
    ``growth_exponent`` and ``growth_exponent_ci95_low``/``_high``); null where unmeasured."""
    settings = with_setting(summary)
    several = settings.groupby("dataset")[["augmentation", "setting"]].nunique().gt(1).any(axis=1)
    out: dict = {}
    for (dataset, augmentation, setting, model), group in settings.groupby(
            ["dataset", "augmentation", "setting", "model"], sort=False):
        data = f"{dataset}/{augmentation}/{setting}" if several[dataset] else dataset
        lowest = group[group.noise_fraction == group.noise_fraction.min()].iloc[0]
        for name, column in HEADLINE_COLUMNS.items():
            out[f"{data}/{model}/{name}"] = (_finite(lowest[column]) if column in lowest
                                             else None)
        fit = growth.get(dataset, {}).get(augmentation, {}).get(setting, {}).get(model, {})
        ci = fit.get("exponent_ci95") or (None, None)
        out[f"{data}/{model}/growth_exponent"] = fit.get("exponent")
        out[f"{data}/{model}/growth_exponent_ci95_low"] = ci[0]
        out[f"{data}/{model}/growth_exponent_ci95_high"] = ci[1]
    return out


def metric_columns(runs: pd.DataFrame) -> list[str]:
    return [c for c in runs.columns if c not in ID_COLUMNS]


def summarize_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std across seeds per group (GROUP_COLUMNS); see module doc."""
    rows = []
    # sort=False keeps the runs table's (grid) order of the groups.
    for key, group in runs.groupby(list(GROUP_COLUMNS), sort=False):
        row: dict[str, object] = dict(zip(GROUP_COLUMNS, key, strict=True))
        row["n_seeds"] = len(group)
        if FIT_METRIC in group:
            row["n_fit"] = int(group[FIT_METRIC].notna().sum())
        for metric in metric_columns(runs):
            values = group[metric].astype(np.float64)
            skipna = metric == FIT_METRIC  # over the seeds that fit
            row[f"{metric}_mean"] = values.mean(skipna=skipna)
            row[f"{metric}_std"] = values.std(ddof=1, skipna=skipna)
        rows.append(row)
    summary = pd.DataFrame(rows)
    for column in summary.columns:
        if column.endswith(("_mean", "_std")):
            summary[column] = summary[column].astype(np.float64)
    return summary


def to_arrow(frame: pd.DataFrame) -> pa.Table:
    """An Arrow table with fixed types and no pandas metadata (no version strings in bytes)."""
    arrays = {}
    for name in frame.columns:
        column = frame[name]
        if name in STRING_COLUMNS:
            arrays[name] = pa.array(column.astype(object).tolist(), type=pa.string())
        elif pd.api.types.is_integer_dtype(column):
            arrays[name] = pa.array(column.to_numpy(np.int64), type=pa.int64())
        else:
            arrays[name] = pa.array(
                column.to_numpy(np.float64), type=pa.float64(), from_pandas=True
            )
    return pa.table(arrays)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(
            tmp, index=False, float_format=CSV_FLOAT_FORMAT, na_rep="", lineterminator="\n"
        )


def aggregate_runs(
    params: dict,
    *,
    geometry_dir: Path,
    train_log_dir: Path,
    runs: Path,
    summary: Path,
    summary_csv: Path,
    curves: Path,
    growth: Path,
    headline: Path,
) -> pd.DataFrame:
    """Write the per-run table, the across-seed summary of the grid, the stacked training
    logs, the growth exponents and the headline; return the summary."""
    grid = params["grid"]
    grid_metrics = read_grid_metrics(grid, Path(geometry_dir))
    run_table = load_runs(grid, grid_metrics)
    summary_table = summarize_runs(run_table)
    exponents = growth_exponents(run_table)
    logs = load_train_logs(Path(train_log_dir), grid)
    made_from = run_inputs(grid, grid_metrics, Path(geometry_dir), Path(train_log_dir))
    write_parquet(to_arrow(run_table), runs, metadata={grid_record: grid, inputs.KEY: made_from})
    # the summary, the growth fits and the headline are computed from the runs table
    of_runs = inputs.digests(runs=runs)
    write_parquet(to_arrow(summary_table), summary,
                  metadata={grid_record: grid, inputs.KEY: of_runs})
    write_csv(summary_table, Path(summary_csv))
    write_csv(logs, Path(curves))
    # the grid's order; and the grid itself and the runs table's md5, which claims and
    # figures check their inputs by
    write_json({**exponents, grid_record: grid, inputs.KEY: of_runs}, Path(growth),
               sort_keys=False)
    write_json(headline_of(summary_table, exponents), Path(headline), sort_keys=False)
    log.info("%d runs -> %d summary rows: %s", len(run_table), len(summary_table), summary)
    return summary_table
