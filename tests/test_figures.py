"""pipeline.stages.figures: the three figures per dataset from small synthetic runs."""

from __future__ import annotations

import itertools
import json
import re

import matplotlib as mpl
import matplotlib.image
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT

from pipeline.infra import frontends, schemas, stage_table
from pipeline.infra.io import InputError, file_md5, write_parquet
from pipeline.infra.runs import Run
from pipeline.stages.aggregate import aggregate_runs, growth_of, load_train_logs
from pipeline.stages.figures import (
    draw_figures,
    iterations_by_noise,
    load_cosines,
    load_runs_table,
    plot_geometry,
    plot_iterations_to_fit,
    plot_training_curves,
)
from pipeline.stages.free_features import TABLE_SCHEMA as FREE_TABLE_SCHEMA

K = 10
DPI = 40  # small: fast, and the PNG size in pixels is checked against it
GRID = {"datasets": ["digits"], "imbalance_ratios": [1], "models": ["supcon", "ce"],
        "augmentations": ["none"], "temperatures": [0.1], "batch_sizes": [256],
        "iterations": [3000],
        "noise_fractions": [0.0, 0.5, 1.0], "seeds": [0, 1]}
# The claims tolerances the temperature figure draws (stage_table.FIGURES.params).
CLAIMS = {"simplex_cosine_deviation": 0.05, "free_relative_gap": 1e-6,
          "free_cosine_deviation": 1e-3}
PARAMS = {"grid": GRID, "figures": {"dpi": DPI, "geometry_noise": 0.5}, "claims": CLAIMS}
STEMS = (
    "geometry_digits", "iterations_to_fit_digits", "gap_vs_accuracy_digits",
    "collapse_digits", "training_curves_digits",
)
EVAL_ITERATIONS = np.array([0, 50, 100], dtype=np.int64)


def iterations_to_fit(model: str, noise: float, seed: int) -> int | None:
    """supcon: exactly 100 p^2 iterations (never fits at p = 0.5 with seed 1); ce: 40 + seed."""
    if model == "supcon":
        return None if (noise, seed) == (0.5, 1) else round(100 * noise**2)
    return 40 + seed


def class_accuracies(job: dict[str, str]) -> list[float | None]:
    """Per test class: falls with rho for the minority (classes 5-9); class 3 of seed 1 has
    no test sample (None), so its mean over seeds is seed 0's."""
    rho, seed = float(job["imbalance_ratio"]), int(job["seed"])
    return [None if (c, seed) == (3, 1) else
            0.9 - 0.01 * c - 0.02 * seed - (0.03 * c * np.log(rho) if c >= 5 else 0.0)
            for c in range(K)]


def metrics_of(job: dict[str, str]) -> dict:
    """The synthetic metrics.json of a run: every value a distinct function of its setting
    (tau, b, rho), noise and seed, so a figure's means over seeds can be checked by a loop."""
    run = Run.of(job)
    model, noise, seed = run.model, run.noise_fraction, run.seed
    tau, b, rho = run.temperature, run.batch_size, run.imbalance_ratio
    ce = model != "supcon"
    m = 0.01 if ce else 0.0  # the models apart
    by_class = class_accuracies(job)
    groups = {g: [a for c, a in enumerate(by_class) if a is not None and (c >= 5) == (g == "min")]
              for g in ("maj", "min")}
    return {
        **run.columns(),
        "num_classes": K,
        "final_iteration": 100,
        "iterations_to_fit": iterations_to_fit(model, noise, seed),
        "test_accuracy_class_mean": 0.9 - 0.5 * noise - 0.01 * seed - 0.1 * tau - m,
        "test_accuracy_head": 0.85 - 0.5 * noise - 0.1 * tau if ce else None,
        "probe_test_accuracy": 0.92 - 0.5 * noise - 0.01 * seed,
        # below 0 under imbalance: the reference is the loss at the simplex
        "final_supcon_gap": 0.01 * (1 + noise) + 0.001 * seed + 0.1 * tau + 1 / b
                            - 0.05 * np.log(rho) + m,
        "final_loss_gap": 0.02 * (1 + noise),
        "supcon_optimum": 1.0 + 10 / b + tau + 0.1 * np.log(rho) + m,
        "class_mean_cosine_mean": -1 / 9 + 0.1 * tau + 0.01 * seed + 0.001 * b / 32 + m,
        "nc2_simplex_angle_deviation": 0.02 + 0.1 * tau + 0.002 * seed + 1e-5 * b + m,
        "class_mean_cosine_deviation": 0.03 + 0.2 * tau + 0.003 * seed,
        "sample_cosine_mean": 0.99 - 0.1 * tau - 0.01 * seed - 0.0001 * b - m,
        "nc1": 0.01 * (1 + tau) * (1 + seed),
        "test_accuracy_majority": float(np.mean(groups["maj"])),
        "test_accuracy_minority": float(np.mean(groups["min"])),
        "test_accuracy_by_class": by_class,
        **{f"class_mean_cosine_{g}": -1 / 9 + i * 0.1 * np.log(rho) + 0.01 * seed + m
           for i, g in enumerate(("majority", "minority", "across"))},
        **{f"head_cosine_{g}": (-1 / 9 + i * 0.2 * np.log(rho) - 0.01 * seed) if ce else None
           for i, g in enumerate(("majority", "minority", "across"))},
    }


def free_features_table(path) -> None:
    """A small records table of stage free_features: supcon at K = 3 and 10 (h = K - 1), full
    batch and b = 8, tau 0.1 and 0.5, three records each (the last one is drawn), plus a ce
    and a multiset record that the temperature figure leaves out."""
    rows = []
    for k, full, tau, it in itertools.product((3, 10), (True, False), (0.1, 0.5), (0, 25, 50)):
        rows.append({"experiment": "grid", "loss_name": "supcon", "num_classes": k,
                     "dim": k - 1, "full_batch": full, "batch_size": 8 * k if full else 8,
                     "temperature": tau, "iteration": it,
                     "relative_gap": free_value(k, full, tau, it, "gap"),
                     "class_mean_cosine_deviation": free_value(k, full, tau, it, "dev")})
    rows.append({**rows[-1], "loss_name": "ce", "temperature": None, "relative_gap": 9.0})
    rows.append({**rows[-1], "experiment": "multiset", "loss_name": "supcon",
                 "temperature": 0.5, "iteration": 99, "relative_gap": 9.0})
    write_parquet(pa.Table.from_pylist(rows, schema=FREE_TABLE_SCHEMA), path)


def free_value(k: int, full: bool, tau: float, iteration: int, what: str) -> float:
    """Falls with the iteration; full batch at tau 0.5 reaches the optimum (gap 0: drawn at
    the log axis' floor 1e-17), tau 0.1 does not; the mini-batch gap is negative."""
    if what == "gap":
        scale = (0.0 if tau == 0.5 else 1e-4 * k) if full else -1e-2
        return scale / (1 + iteration)
    return (1e-9 if tau == 0.5 and full else 0.1 * tau * k) / (1 + iteration)


def write_run(dirs, job: dict[str, str]) -> None:
    model, noise, seed = job["model"], float(job["noise_fraction"]), int(job["seed"])
    metrics = metrics_of(job)
    path = stage_table.run_file(stage_table.GEOMETRY_METRICS, dirs["geometry"], **job)
    path.parent.mkdir(parents=True, exist_ok=True)
    log_path = stage_table.run_file(stage_table.TRAIN_LOG, dirs["logs"], **job)
    kinds = ["class_means"] * 45 + ["sample_to_class_mean"] * 20
    values = [-1 / 9 + 0.01 * seed] * 45 + list(np.linspace(0.5, 1.0, 20))
    if model != "supcon":
        kinds += ["head_weights"] * 45
        values += [-1 / 9] * 45
    cosines = pa.table({"kind": kinds, "value": values}, schema=schemas.COSINES)
    write_parquet(cosines, stage_table.run_file(stage_table.COSINES, dirs["geometry"], **job))
    n = len(EVAL_ITERATIONS)
    log = {
        "iteration": EVAL_ITERATIONS,
        "learning_rate": np.full(n, 0.1),
        "loss": 2.0 - EVAL_ITERATIONS / 100 + seed,  # mean over seeds 0, 1: 2.5 - i/100
        "supcon_loss": np.full(n, 1.0),
        "supcon_optimum": np.full(n, 0.9),
        "supcon_gap": np.full(n, 0.1),
        "loss_gap": np.full(n, 0.2),
        "train_accuracy_noisy": np.array([0.1, 0.5, 1.0]),
        "train_accuracy_clean": np.array([0.1, 0.5, 1.0 - noise]),
        "test_accuracy_class_mean": np.array([0.1, 0.4, 0.8]) - 0.1 * noise,
        "test_accuracy_head": [None] * n if model == "supcon" else np.array([0.1, 0.4, 0.8]),
    }
    write_parquet(pa.table(log, schema=schemas.TRAIN_LOG), log_path)
    # measured on that log, as geometry records it (aggregate checks it)
    metrics["inputs"] = {"embeddings": "e" * 32, "head": "h" * 32,
                         "train_log": file_md5(log_path)}
    path.write_text(json.dumps(metrics))


def build_inputs(tmp_path, grid: dict) -> dict:
    """Every run of ``grid`` written as the geometry and train stages would, aggregated into
    a runs table, and a free-features records table: the figures stage's inputs on ``grid``
    (the free features only where it sweeps tau, as both front-ends pass them)."""
    dirs = {"geometry": tmp_path / "geometry", "logs": tmp_path / "train_logs"}
    for job in stage_table.grid_jobs(stage_table.TRAIN, grid):
        write_run(dirs, job)
    runs = tmp_path / "summary" / "runs.parquet"
    free_features = tmp_path / "free_features" / "records.parquet"
    free_features_table(free_features)
    aggregate_runs(
        {"grid": grid},
        geometry_dir=dirs["geometry"],
        train_log_dir=dirs["logs"],
        runs=runs,
        summary=tmp_path / "summary" / "summary.parquet",
        summary_csv=tmp_path / "summary" / "summary.csv",
        curves=tmp_path / "summary" / "training_curves.csv",
        growth=tmp_path / "summary" / "growth.json",
        headline=tmp_path / "summary" / "headline.json",
    )
    inputs = {"runs": runs, "growth": tmp_path / "summary" / "growth.json",
              "geometry_dir": dirs["geometry"], "train_log_dir": dirs["logs"],
              "free_features": free_features}
    return {name: path for name, path in inputs.items()
            if name in stage_table.FIGURES.deps_for(grid)}


@pytest.fixture
def inputs(tmp_path):
    return build_inputs(tmp_path, GRID)


def draw(inputs, figures, params=PARAMS):
    return draw_figures(params, figures=figures, **inputs)


def test_draw_figures_writes_png_and_pdf_of_each_figure(tmp_path, inputs):
    figures = tmp_path / "figures"
    (figures / "stale").mkdir(parents=True)  # replaced as a whole
    paths = draw(inputs, figures)
    expected = [figures / f"{stem}.{fmt}" for stem in STEMS for fmt in ("png", "pdf")]
    assert paths == expected
    assert sorted(figures.iterdir()) == sorted(expected)
    for path in expected:
        if path.suffix == ".png":
            image = matplotlib.image.imread(path)
            assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0
        else:
            assert path.read_bytes().startswith(b"%PDF")
    # The PNG's size is the figure's size at the dpi from params: (7.0 x 4.8) inches.
    assert matplotlib.image.imread(figures / "iterations_to_fit_digits.png").shape[:2] == (
        round(4.8 * DPI),
        round(7.0 * DPI),
    )


def test_the_free_features_are_an_input_exactly_when_the_grid_sweeps_tau(tmp_path, inputs):
    """Only the temperature figure reads them: on a one-tau grid neither front-end passes them
    (a free-features change reruns no figure), and the stage refuses a mismatch by name."""
    assert "free_features" not in inputs  # GRID holds one temperature
    free = tmp_path / "free.parquet"
    free_features_table(free)
    with pytest.raises(InputError, match=r"grid.temperatures is \[0.1\], so the free-features "
                       r"table is not read; got .*free.parquet"):
        draw(inputs | {"free_features": free}, tmp_path / "a")
    swept = {**PARAMS, "grid": {**GRID, "temperatures": [0.1, 0.5]}}
    with pytest.raises(InputError, match=r"is needed \(--free-features\); got none"):
        draw(inputs, tmp_path / "b", swept)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    for params, needed in ((ROOT / "params.yaml", False),
                           (ROOT / "presets" / "temperature.yaml", True)):
        figures = yaml.safe_load(frontends.render(params))["stages"]["figures"]
        assert (stage_table.FREE_FEATURES_TABLE in figures["deps"]) == needed, params
        assert ("--free-features" in figures["cmd"]) == needed, params


def test_rerun_gives_byte_identical_files(tmp_path, inputs):
    first = {p.name: p.read_bytes() for p in draw(inputs, tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in draw(inputs, tmp_path / "b")}
    assert first == second
    assert b"CreationDate" not in first["geometry_digits.pdf"]
    assert b"Software" not in first["geometry_digits.png"]


def test_missing_cosines_is_an_error_naming_its_path(tmp_path, inputs):
    path = stage_table.run_file(
        stage_table.COSINES, inputs["geometry_dir"], dataset="digits", model="ce",
        augmentation="none", imbalance_ratio="1", temperature="0.1", batch_size="256",
        iterations="3000", noise_fraction="0.5", seed="1"
    )
    path.unlink()
    with pytest.raises(InputError, match=re.escape(str(path))):
        draw(inputs, tmp_path / "figures")
    assert not (tmp_path / "figures").exists()


def test_growth_fits_of_another_grid_are_refused_by_name(tmp_path, inputs):
    """growth.json of another aggregate run (same shape, another grid recorded): one named
    error naming the file, the key and both values; nothing drawn."""
    fits = json.loads(inputs["growth"].read_text())
    fits["grid"] = {**fits["grid"], "seeds": [7]}
    swapped = tmp_path / "other" / "growth.json"
    swapped.parent.mkdir()
    swapped.write_text(json.dumps(fits))
    with pytest.raises(InputError) as error:
        draw({**inputs, "growth": swapped}, tmp_path / "figures")
    assert str(error.value) == (
        f"{swapped}: growth fits made for another grid than params' (rerun aggregate): "
        f"grid.seeds: [7], expected {GRID['seeds']}")
    assert not (tmp_path / "figures").exists()



@pytest.mark.parametrize("swapped", ["growth", "train_log", "metrics"])
def test_a_file_of_the_same_run_made_from_other_bytes_is_refused(tmp_path, inputs, swapped):
    """Issue 23: every file the figures read beside the runs table is the one it was made
    from: growth fits of the same grid made from another runs table, a training log or a
    metrics.json of the same run with other numbers. Each named, nothing drawn."""
    job = stage_table.grid_jobs(stage_table.TRAIN, GRID)[0]
    # the run's name holds dots: messages show its key in brackets
    run, key = re.escape(Run.of(job).name), re.escape(repr(Run.of(job).name))
    if swapped == "growth":
        fits = json.loads(inputs["growth"].read_text())
        fits["inputs"]["runs"] = "0" * 32  # made from another runs table of this grid
        inputs["growth"].write_text(json.dumps(fits))
        message = (rf"growth.json: made from runs with md5 0{{32}} \(field inputs.runs\), "
                   rf"but {re.escape(str(inputs['runs']))} has md5 ")
    elif swapped == "train_log":
        path = stage_table.run_file(stage_table.TRAIN_LOG, inputs["train_log_dir"], **job)
        log = pq.read_table(path)
        loss = pa.array(log["loss"].to_numpy() + 0.5)  # the same schema, other numbers
        write_parquet(log.set_column(log.schema.get_field_index("loss"), "loss", loss)
                      .replace_schema_metadata(None), path)
        message = (rf"runs.parquet: made from train_logs of run {run} with md5 \w{{32}} "
                   rf"\(field inputs.train_logs\[{key}\]\), but {re.escape(str(path))} has md5 ")
    else:
        path = stage_table.run_file(stage_table.GEOMETRY_METRICS, inputs["geometry_dir"], **job)
        metrics = json.loads(path.read_text())
        metrics["nc1"] += 0.01
        path.write_text(json.dumps(metrics))
        message = (rf"runs.parquet: made from metrics of run {run} with md5 \w{{32}} "
                   rf"\(field inputs.metrics\[{key}\]\), but ")
    with pytest.raises(InputError, match=message):
        draw(inputs, tmp_path / "figures")
    assert not (tmp_path / "figures").exists()

def test_runs_table_must_cover_the_grid(tmp_path, inputs):
    grid = {**GRID, "seeds": [0, 1, 2]}
    with pytest.raises(InputError, match="no row for run"):
        draw(inputs, tmp_path / "figures", {**PARAMS, "grid": grid})


def test_iterations_figure_marks_not_fit_runs_and_reports_exponents(inputs):
    runs = pd.read_parquet(inputs["runs"])
    stats = iterations_by_noise(runs[runs["model"] == "supcon"])
    assert list(stats["n_fit"]) == [2, 1, 2]
    assert list(stats["mean"]) == [0.0, 25.0, 100.0]
    growth = json.loads(inputs["growth"].read_text())["digits"]["none"]
    (fits,) = growth.values()  # the one setting
    fig = plot_iterations_to_fit(runs, dataset="digits", num_classes=K, models=["supcon", "ce"],
                                 fits=fits)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    # The legend's fit is growth.json's, drawn as aggregate wrote it (aggregate.growth_of:
    # censored, with its interval); ce is flat (40.5 at every p, nothing censored): a = 0.
    fit = growth_of(runs[runs["model"] == "supcon"])
    assert fits["supcon"]["exponent"] == fit.exponent
    lo, hi = fit.ci95
    # its band is the bootstrap's, point for point (the shaded area of the figure)
    assert tuple(fits["supcon"]["band"]["lower"]) == fit.band[1]
    (shaded,) = [c for c in ax.collections if c.get_alpha() == 0.12 and
                 tuple(c.get_facecolor()[0][:3]) == mpl.colors.to_rgb("C0")]
    vertices = shaded.get_paths()[0].vertices
    assert min(vertices[:, 1]) == pytest.approx(min(fit.band[1]))
    assert labels[0].startswith(f"SupCon: a = {fit.exponent:.2f}")
    assert labels[0].endswith(f"95% CI [{lo:.2f}, {hi:.2f}]")
    assert labels[1].startswith("CE: a = -0.00") or labels[1].startswith("CE: a = 0.00")
    assert "not fit (shown at 100)" in labels
    # The run that never fit is drawn as an x at the training length, not dropped.
    crosses = [line for line in ax.lines if line.get_marker() == "x"]
    assert len(crosses) == 1
    assert list(crosses[0].get_ydata()) == [100.0]
    assert "digits (K = 10)" in ax.get_title()


def test_geometry_figure_has_reference_lines_and_no_head_for_supcon(inputs):
    cosines = load_cosines(inputs["geometry_dir"], GRID, 0.5)
    assert set(cosines["seed"]) == {0, 1}  # pooled over seeds
    fig = plot_geometry(
        cosines, dataset="digits", num_classes=K, models=["supcon", "ce"], noise_fraction=0.5
    )
    supcon_ax, ce_ax = fig.axes
    for ax in (supcon_ax, ce_ax):
        levels = {line.get_label(): list(line.get_ydata()) for line in ax.lines}
        assert levels["simplex -1/(K-1) = -0.1111"] == [pytest.approx(-1 / 9)] * 2
        assert levels["1 (collapse)"] == [1.0, 1.0]
    assert "no head" in [t.get_text() for t in supcon_ax.texts]
    assert "no head" not in [t.get_text() for t in ce_ax.texts]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["simplex -1/(K-1) = -0.1111", "1 (collapse)"]
    assert fig.get_suptitle().startswith("digits (K = 10)")


def test_training_curves_are_means_over_seeds(inputs):
    logs = load_train_logs(inputs["train_log_dir"], GRID)
    fig = plot_training_curves(
        logs,
        dataset="digits",
        num_classes=K,
        models=["supcon", "ce"],
        noise_fractions=[0.0, 0.5, 1.0],
    )
    axes = np.array(fig.axes).reshape(4, 2)  # loss, supcon gap, train acc, test acc
    loss_lines = axes[0, 0].get_lines()
    assert len(loss_lines) == 3  # one per noise fraction
    np.testing.assert_allclose(loss_lines[0].get_ydata(), 2.5 - EVAL_ITERATIONS / 100)
    np.testing.assert_allclose(axes[1, 0].get_lines()[0].get_ydata(), [0.1, 0.1, 0.1])
    np.testing.assert_allclose(axes[3, 1].get_lines()[2].get_ydata(), [0.0, 30.0, 70.0])  # %
    assert axes[2, 0].get_ylabel().endswith("(%)")
    assert axes[3, 0].get_xlabel() == "iteration (SGD steps)"


def test_gap_figure_plots_every_run_against_its_test_accuracy(inputs):
    from pipeline.stages.figures import plot_gap_vs_accuracy

    runs = load_runs_table(inputs["runs"], GRID)
    fig = plot_gap_vs_accuracy(runs, dataset="digits", num_classes=K, models=["supcon", "ce"])
    left, right = fig.axes[:2]
    supcon = left.collections[0].get_offsets()
    of_supcon = runs[runs["model"] == "supcon"]
    np.testing.assert_allclose(supcon[:, 0], of_supcon["final_supcon_gap"])
    np.testing.assert_allclose(supcon[:, 1], 100 * of_supcon["test_accuracy_class_mean"])
    np.testing.assert_allclose(right.collections[1].get_offsets()[:, 0],
                               runs[runs["model"] == "ce"]["final_loss_gap"])


def test_runs_outside_the_grid_are_not_drawn(inputs):
    grid = {**GRID, "models": ["ce"], "seeds": [1]}
    runs = load_runs_table(inputs["runs"], grid)
    assert len(runs) == 3
    assert set(runs["model"]) == {"ce"} and set(runs["seed"]) == {1}
