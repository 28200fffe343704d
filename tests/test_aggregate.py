"""Stage aggregate: per-run table and across-seed summary of synthetic geometry metrics."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.infra import inputs, schemas, stage_table
from pipeline.infra.io import InputError, file_md5, read_metadata, write_parquet
from pipeline.infra.runs import Run
from pipeline.stages.aggregate import aggregate_runs, check_run_files

# Model order deliberately not alphabetical: the outputs must keep the grid's order.
GRID = {"datasets": ["digits"], "imbalance_ratios": [1], "models": ["supcon", "ce"],
        "augmentations": ["none"], "temperatures": [0.1], "batch_sizes": [256],
        "iterations": [3000], "noise_fractions": [0.0, 0.5, 1.0], "seeds": [0, 1]}
SETTING = {"imbalance_ratio": 1.0, "temperature": 0.1, "batch_size": 256,  # GRID's one setting
           "iterations": 3000}
SETTING_TEXT = {"imbalance_ratio": "1", "temperature": "0.1", "batch_size": "256",
                "iterations": "3000"}
SETTING_NAME = "rho1-tau0.1-b256-T3000"
IDENTITY = ["dataset", "imbalance_ratio", "model", "augmentation", "temperature", "batch_size",
            "iterations", "noise_fraction", "seed"]
PARAMS = {"grid": GRID}
# iterations_to_fit per (model, noise) for seeds 0 and 1; None = never fit.
ITERATIONS = {
    ("supcon", 0.0): (100, 300),
    ("supcon", 0.5): (1000, None),
    ("supcon", 1.0): (None, None),
    ("ce", 0.0): (200, 200),
    ("ce", 0.5): (500, 700),
    ("ce", 1.0): (900, None),
}


def metrics_for(dataset: str, model: str, noise: float, seed: int) -> dict:
    """Known values: final_loss = 1 + noise + seed/10,
    train_accuracy_noisy = 1 - noise/2 - seed/100, nc1 and test accuracy linear in both too,
    iterations_to_fit from ITERATIONS."""
    it = ITERATIONS.get((model, noise), (5, 5))[seed] if seed in (0, 1) else 12345
    return {
        "dataset": dataset,
        "model": model,
        "augmentation": "none",
        **SETTING,
        "noise_fraction": noise,
        "seed": seed,
        "num_classes": 10,
        "simplex_cosine": -1 / 9,
        "final_loss": 1.0 + noise + seed / 10,
        "train_accuracy_noisy": 1.0 - noise / 2 - seed / 100,
        "head_cosine_mean": None if model == "supcon" else -0.1 - seed / 100,
        "nc1": 0.5 - noise / 4 + seed / 100,
        "test_accuracy_class_mean": 0.9 - noise / 10 - seed / 50,
        "iterations_to_fit": it,
        "final_iteration": 3000,
        "note": "free text is not a metric",
    }


def write_run(geometry_dir, metrics: dict, noise_text: str | None = None) -> None:
    job = {
        "dataset": metrics["dataset"],
        "model": metrics["model"],
        "augmentation": metrics["augmentation"],
        **SETTING_TEXT,
        "noise_fraction": noise_text or str(metrics["noise_fraction"]),
        "seed": str(metrics["seed"]),
    }
    path = stage_table.run_file(stage_table.GEOMETRY_METRICS, geometry_dir, **job)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True))


def log_for(noise: float, seed: int) -> pa.Table:
    """A two-row training log with known values: loss = 1 + noise + seed/10 + iteration/1000;
    test_accuracy_head null in the second row."""
    iterations = [50, 100]
    columns = {f.name: [0.5 + i / 1000 for i in iterations] for f in schemas.TRAIN_LOG}
    columns["iteration"] = iterations
    columns["loss"] = [1 + noise + seed / 10 + i / 1000 for i in iterations]
    columns["test_accuracy_head"] = [0.25, None]
    return pa.table(columns, schema=schemas.TRAIN_LOG)


def write_grid(geometry_dir, grid=GRID) -> None:
    """Every run's geometry metrics, and its training log in the sibling train_logs/."""
    for job in stage_table.grid_jobs(stage_table.GEOMETRY, grid):
        noise, seed = float(job["noise_fraction"]), int(job["seed"])
        log = stage_table.run_file(stage_table.TRAIN_LOG, geometry_dir.parent / "train_logs", **job)
        write_parquet(log_for(noise, seed), log)
        metrics = metrics_for(job["dataset"], job["model"], noise, seed)
        # measured on that log, as geometry records it
        metrics[inputs.KEY] = {"embeddings": "e" * 32, "head": "h" * 32,
                               "train_log": file_md5(log)}
        write_run(geometry_dir, metrics, job["noise_fraction"])


def outputs(tmp_path):
    out = tmp_path / "summary"
    return {
        "runs": out / "runs.parquet",
        "summary": out / "summary.parquet",
        "summary_csv": out / "summary.csv",
        "curves": out / "training_curves.csv",
        "growth": out / "growth.json",
        "headline": out / "headline.json",
    }


def aggregate(tmp_path, params=PARAMS):
    """aggregate_runs on write_grid's folders under ``tmp_path``, into outputs(tmp_path)."""
    return aggregate_runs(
        params, geometry_dir=tmp_path / "geometry", train_log_dir=tmp_path / "train_logs",
        **outputs(tmp_path),
    )


@pytest.fixture
def geometry_dir(tmp_path):
    directory = tmp_path / "geometry"
    write_grid(directory)
    return directory


def test_runs_table_has_one_row_per_grid_run_in_grid_order(tmp_path, geometry_dir):
    paths = outputs(tmp_path)
    aggregate(tmp_path)
    runs = pq.read_table(paths["runs"]).to_pandas()
    assert len(runs) == 12
    assert list(runs.columns[:9]) == IDENTITY
    assert list(runs["model"]) == ["supcon"] * 6 + ["ce"] * 6
    assert list(runs["noise_fraction"][:6]) == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    assert list(runs["seed"][:6]) == [0, 1, 0, 1, 0, 1]
    assert "note" not in runs  # non-numeric keys are not metrics
    assert runs["num_classes"].dtype == np.int64
    row = runs[(runs["model"] == "ce") & (runs["noise_fraction"] == 0.5) & (runs["seed"] == 1)]
    assert row["final_loss"].item() == pytest.approx(1.6)
    assert row["iterations_to_fit"].item() == 700
    not_fit = runs[(runs["model"] == "supcon") & (runs["noise_fraction"] == 1.0)]
    assert not_fit["iterations_to_fit"].isna().all()


def test_summary_means_stds_and_fit_counts(tmp_path, geometry_dir):
    paths = outputs(tmp_path)
    returned = aggregate(tmp_path)
    summary = pq.read_table(paths["summary"]).to_pandas()
    assert len(summary) == 6
    assert list(summary.columns[:10]) == [*IDENTITY[:-1], "n_seeds", "n_fit"]
    assert list(zip(summary["model"], summary["noise_fraction"], strict=True)) == [
        ("supcon", 0.0), ("supcon", 0.5), ("supcon", 1.0), ("ce", 0.0), ("ce", 0.5), ("ce", 1.0),
    ]
    by = summary.set_index(["model", "noise_fraction"])
    assert (summary["n_seeds"] == 2).all()
    # final_loss at (ce, 0.5): seeds 1.5 and 1.6 -> mean 1.55, sample std 0.1/sqrt(2).
    assert by.loc[("ce", 0.5), "final_loss_mean"] == pytest.approx(1.55)
    assert by.loc[("ce", 0.5), "final_loss_std"] == pytest.approx(0.1 / math.sqrt(2))
    assert by.loc[("supcon", 1.0), "train_accuracy_noisy_mean"] == pytest.approx(0.495)
    assert by.loc[("ce", 0.0), "num_classes_std"] == 0.0
    # iterations_to_fit over the seeds that fit.
    assert by.loc[("supcon", 0.0), "iterations_to_fit_mean"] == 200.0
    assert by.loc[("supcon", 0.0), "iterations_to_fit_std"] == pytest.approx(math.sqrt(20000))
    assert by.loc[("supcon", 0.0), "n_fit"] == 2
    assert by.loc[("supcon", 0.5), "iterations_to_fit_mean"] == 1000.0
    assert math.isnan(by.loc[("supcon", 0.5), "iterations_to_fit_std"])  # one seed fit
    assert by.loc[("supcon", 0.5), "n_fit"] == 1
    assert math.isnan(by.loc[("supcon", 1.0), "iterations_to_fit_mean"])
    assert by.loc[("supcon", 1.0), "n_fit"] == 0
    assert by.loc[("ce", 0.5), "iterations_to_fit_mean"] == 600.0
    assert by.loc[("ce", 0.5), "n_fit"] == 2
    # A metric that is null for every seed stays null; it is not zero.
    assert math.isnan(by.loc[("supcon", 0.0), "head_cosine_mean_mean"])
    assert by.loc[("ce", 0.0), "head_cosine_mean_mean"] == pytest.approx(-0.105)
    pd.testing.assert_frame_equal(returned, summary, check_dtype=False)


def test_csv_matches_parquet_with_fixed_formatting(tmp_path, geometry_dir):
    paths = outputs(tmp_path)
    aggregate(tmp_path)
    text = paths["summary_csv"].read_text()
    header, first = text.splitlines()[:2]
    summary = pq.read_table(paths["summary"]).to_pandas()
    assert header.split(",") == list(summary.columns)
    assert first.startswith("digits,1,supcon,none,0.1,256,3000,0,2,2,")  # %.10g: 0.0 -> "0"
    assert "0.1111111111" in first  # -1/9 with 10 significant digits
    csv = pd.read_csv(paths["summary_csv"])
    np.testing.assert_allclose(csv["final_loss_mean"], summary["final_loss_mean"], rtol=1e-9)


def test_single_seed_gives_nan_std(tmp_path):
    grid = {**GRID, "seeds": [1]}
    write_grid(tmp_path / "geometry", grid)
    summary = aggregate(tmp_path, {"grid": grid})
    assert (summary["n_seeds"] == 1).all()
    assert summary["final_loss_std"].isna().all()
    assert summary["final_loss_mean"].notna().all()


def test_extra_runs_on_disk_are_ignored(tmp_path, geometry_dir):
    write_run(geometry_dir, metrics_for("digits", "ce", 0.5, 7))  # seed not in the grid
    write_run(geometry_dir, metrics_for("digits", "ce", 0.25, 0))  # noise not in the grid
    write_run(geometry_dir, metrics_for("digits", "ce_fixed", 0.5, 0))  # model not in the grid
    paths = outputs(tmp_path)
    summary = aggregate(tmp_path)
    runs = pq.read_table(paths["runs"]).to_pandas()
    assert len(runs) == 12
    assert set(runs["seed"]) == {0, 1}
    assert set(runs["model"]) == {"supcon", "ce"}
    assert 12345 not in set(runs["iterations_to_fit"])
    assert len(summary) == 6


def test_missing_run_is_an_error_naming_its_path(tmp_path, geometry_dir):
    missing = stage_table.run_file(
        stage_table.GEOMETRY_METRICS, geometry_dir, dataset="digits", model="ce",
        augmentation="none", **SETTING_TEXT,
        noise_fraction="1.0", seed="0"
    )
    missing.unlink()
    with pytest.raises(InputError, match=re.escape(str(missing))):
        aggregate(tmp_path)
    assert not outputs(tmp_path)["summary"].exists()


def test_run_identity_must_match_its_path(tmp_path, geometry_dir):
    path = stage_table.run_file(
        stage_table.GEOMETRY_METRICS, geometry_dir, dataset="digits", model="ce",
        augmentation="none", **SETTING_TEXT,
        noise_fraction="0.5", seed="1"
    )
    path.write_text(json.dumps(metrics_for("digits", "ce", 0.5, 0)))  # says seed 0
    with pytest.raises(InputError, match=re.escape(f"{path}: seed is 0 but the path says 1")):
        aggregate(tmp_path)


def test_truncated_json_is_an_error_naming_its_path(tmp_path, geometry_dir):
    path = stage_table.run_file(
        stage_table.GEOMETRY_METRICS, geometry_dir, dataset="digits", model="ce",
        augmentation="none", **SETTING_TEXT,
        noise_fraction="0.0", seed="0"
    )
    path.write_text(path.read_text()[:20])
    with pytest.raises(InputError, match=re.escape(str(path))):
        aggregate(tmp_path)


def test_rerun_gives_byte_identical_files(tmp_path, geometry_dir):
    paths = outputs(tmp_path)
    aggregate(tmp_path)
    first = {name: path.read_bytes() for name, path in paths.items()}
    for path in paths.values():
        path.unlink()
    aggregate(tmp_path)
    assert {name: path.read_bytes() for name, path in paths.items()} == first


def test_growth_exponents_count_the_runs_that_never_fit(tmp_path):
    from pipeline.maths.statistics import censored_power_law

    geometry_dir = tmp_path / "geometry"
    write_grid(geometry_dir)
    paths = outputs(tmp_path)
    aggregate(tmp_path)
    growth = json.loads(paths["growth"].read_text())
    # ce: 500 and 700 at p = 0.5; 900 and one run censored at 3,000 at p = 1. The censored
    # fit equals censored_power_law on those four runs and is steeper than dropping the run.
    ce = growth["digits"]["none"][SETTING_NAME]["ce"]
    c, a, sigma = censored_power_law([0.5, 0.5, 1.0, 1.0], [500, 700, 900, 3000],
                                     [False, False, False, True])
    assert (ce["exponent"], ce["coefficient"], ce["sigma"]) == (
        pytest.approx(a, rel=1e-9), pytest.approx(c, rel=1e-9), pytest.approx(sigma, rel=1e-9))
    dropped = np.polyfit(np.log([0.5, 0.5, 1.0]), np.log([500, 700, 900]), 1)[0]
    assert ce["exponent"] > dropped
    assert (ce["runs_used"], ce["runs_not_fit"]) == (4, 1)
    lo, hi = ce["exponent_ci95"]
    assert lo <= ce["exponent"] <= hi
    assert ce["superlinear"] == ("yes" if lo > 1 else "no" if hi < 1 else "inconclusive")
    # supcon: 1,000 and one censored run at p = 0.5, both censored at p = 1: steeper than ce.
    supcon = growth["digits"]["none"][SETTING_NAME]["supcon"]
    assert supcon["exponent"] > ce["exponent"]
    assert (supcon["runs_used"], supcon["runs_not_fit"]) == (4, 3)
    assert list(growth["digits"]["none"][SETTING_NAME]) == ["supcon", "ce"]  # the grid's order


def test_headline_is_a_few_named_numbers_per_model_at_the_lowest_noise(tmp_path, geometry_dir):
    """headline.json: per model, the seeds' mean at p = 0 of each HEADLINE_COLUMNS column
    (a naive mean over the runs table here), then the growth fit as growth.json holds it."""
    from pipeline.stages.aggregate import HEADLINE_COLUMNS

    paths = outputs(tmp_path)
    aggregate(tmp_path)
    headline = json.loads(paths["headline"].read_text())
    assert headline.pop("numerics")["mode"] == "portable"
    growth = json.loads(paths["growth"].read_text())["digits"]["none"][SETTING_NAME]
    runs = pd.read_parquet(paths["runs"])
    names = [*HEADLINE_COLUMNS, "growth_exponent", "growth_exponent_ci95_low",
             "growth_exponent_ci95_high"]
    assert list(headline) == [f"digits/{m}/{n}" for m in ("supcon", "ce") for n in names]
    for model in ("supcon", "ce"):
        at0 = runs[(runs.model == model) & (runs.noise_fraction == 0.0)]
        assert headline[f"digits/{model}/nc1"] is not None  # measured, not null
        for name, column in HEADLINE_COLUMNS.items():
            column = column.removesuffix("_mean")
            expected = sum(at0[column]) / len(at0) if column in at0 else None
            assert headline[f"digits/{model}/{name}"] == (
                None if expected is None or np.isnan(expected) else pytest.approx(expected))
        assert headline[f"digits/{model}/growth_exponent"] == growth[model]["exponent"]
        assert [headline[f"digits/{model}/growth_exponent_ci95_{end}"]
                for end in ("low", "high")] == growth[model]["exponent_ci95"]


def test_training_curves_stack_every_log_of_the_grid_in_grid_order(tmp_path, geometry_dir):
    paths = outputs(tmp_path)
    aggregate(tmp_path)
    curves = pd.read_csv(paths["curves"])
    assert list(curves.columns) == IDENTITY + [f.name for f in schemas.TRAIN_LOG]
    runs = [(j["model"], float(j["noise_fraction"]), int(j["seed"]))
            for j in stage_table.grid_jobs(stage_table.TRAIN, GRID)]
    assert list(zip(curves["model"], curves["noise_fraction"], curves["seed"], strict=True)) == [
        run for run in runs for _ in range(2)
    ]
    expected = [1 + p + s / 10 + i / 1000 for _, p, s in runs for i in (50, 100)]
    np.testing.assert_allclose(curves["loss"], expected, rtol=1e-9)
    assert curves["test_accuracy_head"].isna().tolist() == [False, True] * len(runs)


def test_a_missing_training_log_is_an_error_naming_its_path(tmp_path, geometry_dir):
    job = {"dataset": "digits", "model": "ce", "augmentation": "none", **SETTING_TEXT,
           "noise_fraction": "0.5", "seed": "1"}
    missing = stage_table.run_file(stage_table.TRAIN_LOG, tmp_path / "train_logs", **job)
    missing.unlink()
    with pytest.raises(InputError, match=re.escape(str(missing))):
        aggregate(tmp_path)
    assert not outputs(tmp_path)["curves"].exists()


def test_outputs_record_the_files_they_were_made_from(tmp_path, geometry_dir):
    """Issue 23: the runs table records every metrics.json and training log by md5 (by run
    name), the summary and growth fits the runs table they were computed from."""
    paths = outputs(tmp_path)
    aggregate(tmp_path)
    made_from = read_metadata(paths["runs"])[inputs.KEY]
    jobs = stage_table.grid_jobs(stage_table.GEOMETRY, GRID)
    assert list(made_from) == ["metrics", "train_logs"]
    for job in jobs:
        name = Run.of(job).name
        assert made_from["metrics"][name] == file_md5(
            stage_table.run_file(stage_table.GEOMETRY_METRICS, tmp_path / "geometry", **job))
        assert made_from["train_logs"][name] == file_md5(
            stage_table.run_file(stage_table.TRAIN_LOG, tmp_path / "train_logs", **job))
    assert len(made_from["metrics"]) == len(jobs) == 12
    runs_md5 = {"runs": file_md5(paths["runs"])}
    assert read_metadata(paths["summary"])[inputs.KEY] == runs_md5
    assert json.loads(paths["growth"].read_text())[inputs.KEY] == runs_md5
    assert inputs.KEY not in json.loads(paths["headline"].read_text())  # a DVC metrics file


def test_a_training_log_of_another_training_of_the_same_run_is_refused(tmp_path, geometry_dir):
    """Same run, same schema, other bytes (a retraining): its metrics.json was measured on
    another log, so aggregate refuses to pair them, naming both md5s, and writes nothing."""
    job = {"dataset": "digits", "model": "ce", "augmentation": "none", **SETTING_TEXT,
           "noise_fraction": "0.5", "seed": "1"}
    log = stage_table.run_file(stage_table.TRAIN_LOG, tmp_path / "train_logs", **job)
    metrics = stage_table.run_file(stage_table.GEOMETRY_METRICS, tmp_path / "geometry", **job)
    want = file_md5(log)
    write_parquet(log_for(0.5, 2), log)  # another training's numbers, the same run's path
    with pytest.raises(InputError, match=(
            rf"{re.escape(str(metrics))}: made from train_log with md5 {want} \(field "
            rf"inputs.train_log\), but {re.escape(str(log))} has md5 {file_md5(log)}")):
        aggregate(tmp_path)
    assert not any(p.exists() for p in outputs(tmp_path).values())


def test_a_runs_table_that_records_no_md5_for_a_run_is_refused_naming_the_field(
        tmp_path, geometry_dir):
    """The runs table's per-run md5s sit under keys that hold dots (run names): the message
    names the missing field with the run's key in brackets, not a dotted path it is not."""
    paths = outputs(tmp_path)
    aggregate(tmp_path)
    meta = read_metadata(paths["runs"])
    (job, *_) = stage_table.grid_jobs(stage_table.GEOMETRY, GRID)
    name = Run.of(job).name
    log = stage_table.run_file(stage_table.TRAIN_LOG, tmp_path / "train_logs", **job)
    check_run_files(paths["runs"], meta, {"train_logs": {name: log}})  # as recorded: passes
    del meta[inputs.KEY]["train_logs"][name]
    with pytest.raises(InputError, match=re.escape(
            f"{paths['runs']}: records no inputs.train_logs['{name}'] (made by an older")):
        check_run_files(paths["runs"], meta, {"train_logs": {name: log}})
    assert inputs.shown(inputs.field("train_log")) == "inputs.train_log"
