"""pipeline.report.sweep_plots and the figures stage's sweep figures: which runs each draws,
that it is drawn exactly when the grid sweeps its axis, and that the plotted numbers are the
means over seeds of the synthetic runs of tests/test_figures.py, recomputed here by a loop."""

from __future__ import annotations

import logging

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from test_figures import CLAIMS, GRID, PARAMS, K, build_inputs, free_value, metrics_of

from pipeline.infra import stage_table
from pipeline.infra.io import read_parquet
from pipeline.infra.provenance import read_provenance
from pipeline.infra.runs import SETTING, setting_name
from pipeline.report.sweep_plots import (
    FREE_FEATURES_COLUMNS,
    fixed_name,
    plot_batch_size,
    plot_imbalance,
    plot_temperature,
    sweep_jobs,
    sweeps,
)
from pipeline.stages.figures import draw_figures, load_class_accuracies, load_runs_table, run_files

# figure kind -> the one setting axis its grid sweeps (the other two keep GRID's one value)
SWEPT = {
    "temperature": ("temperature", {"temperatures": [0.05, 0.5]}),
    "batch_size": ("batch_size", {"batch_sizes": [32, 256]}),
    "imbalance": ("imbalance_ratio", {"imbalance_ratios": [1, 10]}),
}
MODELS = ["supcon", "ce"]


def grid_of(kind: str) -> dict:
    return {**GRID, **SWEPT[kind][1]}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """kind -> the figures stage's inputs for the grid sweeping that kind's axis (built once)."""
    cache: dict[str, dict] = {}

    def get(kind: str) -> dict:
        if kind not in cache:
            cache[kind] = build_inputs(tmp_path_factory.mktemp(kind), grid_of(kind))
        return cache[kind]

    return get


def the_sweep(inputs: dict, kind: str):
    grid = grid_of(kind)
    (sweep,) = sweeps(load_runs_table(inputs["runs"], grid), grid)
    return sweep


def line(fig, gid: str):
    found = [ln for ax in fig.axes for ln in ax.lines if ln.get_gid() == gid]
    assert len(found) == 1, f"{len(found)} lines with gid {gid!r}"
    return found[0]


def gids(fig) -> set[str]:
    return {ln.get_gid() for ax in fig.axes for ln in ax.lines if ln.get_gid()}


def loop_means(kind: str, model: str, value) -> tuple[list[float], list[float]]:
    """Per value of the swept axis (sorted): the mean over seeds of ``value(metrics)`` for the
    runs of ``model`` at the lowest noise fraction (0.0); a None value is left out."""
    axis = SWEPT[kind][0]
    found: dict[float, list[float]] = {}
    for job in stage_table.grid_jobs(stage_table.TRAIN, grid_of(kind)):
        if job["model"] == model and float(job["noise_fraction"]) == 0.0:
            v = value(metrics_of(job))
            if v is not None:
                found.setdefault(float(job[axis]), []).append(v)
    xs = sorted(found)
    return xs, [sum(found[x]) / len(found[x]) for x in xs]


def check_line(fig, gid: str, kind: str, value, scale: float = 1.0) -> None:
    model = gid.split("/")[0]
    xs, means = loop_means(kind, model, value)
    shown = line(fig, gid)
    np.testing.assert_allclose(shown.get_xdata(), xs)
    np.testing.assert_allclose(shown.get_ydata(), scale * np.array(means), rtol=1e-12)


@pytest.mark.parametrize("kind", list(SWEPT))
def test_a_swept_axis_draws_its_figure_with_provenance(tmp_path, built, kind):
    inputs, grid = built(kind), grid_of(kind)
    paths = draw_figures({**PARAMS, "grid": grid}, figures=tmp_path / "figures", **inputs)
    names = [p.name for p in paths]
    # the paper's five per setting (the setting named in the stem), then the one sweep figure
    settings = {setting_name(dict(zip(SETTING, s, strict=True))) for s in
                [(r, t, b, n) for r in grid["imbalance_ratios"] for t in grid["temperatures"]
                 for b in grid["batch_sizes"] for n in grid["iterations"]]}
    assert len(settings) == 2 and len(names) == 2 * (5 * 2 + 1)
    assert names[-2:] == [f"{kind}_digits.png", f"{kind}_digits.pdf"]
    assert all(not n.startswith(tuple(SWEPT)) for n in names[:-2])
    assert matplotlib.image.imread(tmp_path / "figures" / f"{kind}_digits.png").ndim == 3
    assert (tmp_path / "figures" / f"{kind}_digits.pdf").read_bytes().startswith(b"%PDF")
    expected = {stage_table.RUNS_TABLE}
    if kind == "temperature":
        expected.add(stage_table.FREE_FEATURES_TABLE)
    if kind == "imbalance":  # every drawn run's metrics.json: both models, rho, seeds at p = 0
        jobs = [j for j in stage_table.grid_jobs(stage_table.TRAIN, grid)
                if float(j["noise_fraction"]) == 0.0]
        assert len(jobs) == 2 * 2 * 2
        expected |= {stage_table.fill(stage_table.GEOMETRY_METRICS, **j) for j in jobs}
    for fmt in ("png", "pdf"):
        record = read_provenance(tmp_path / "figures" / f"{kind}_digits.{fmt}")
        assert set(record["inputs"]) == expected
        assert record["figure"] == f"{kind}_digits"
        assert record["params"]["grid"] == grid
        assert record["params"]["claims.simplex_cosine_deviation"] == 0.05


def test_temperature_figure_plots_the_seed_means_and_the_free_features(built):
    inputs = built("temperature")
    sweep = the_sweep(inputs, "temperature")
    assert (sweep.kind, sweep.fixed, sweep.noise_fraction) == (
        "temperature", {"imbalance_ratio": 1.0, "batch_size": 256, "iterations": 3000}, 0.0)
    free = read_parquet(inputs["free_features"], FREE_FEATURES_COLUMNS).to_pandas()
    fig = plot_temperature(sweep, free, dataset="digits", num_classes=K, models=MODELS,
                           tolerances=CLAIMS)
    for column in ("class_mean_cosine_mean", "nc2_simplex_angle_deviation",
                   "class_mean_cosine_deviation", "sample_cosine_mean", "nc1",
                   "final_supcon_gap"):
        check_line(fig, f"supcon/{column}", "temperature", lambda m, c=column: m[c])
    check_line(fig, "supcon/test_accuracy_class_mean", "temperature",
               lambda m: m["test_accuracy_class_mean"], scale=100.0)
    assert not any(g.startswith("ce/") for g in gids(fig))  # supcon models only
    # NC2 seed means 0.0286 (tau 0.05) and 0.0736 (tau 0.5): only tau 0.05 within 0.05
    assert list(line(fig, "supcon/reaches_simplex").get_xdata()) == [0.05]
    # the band of panel (a) spans the seeds: min and max over every run drawn
    _, lows = loop_means("temperature", "supcon", lambda m: m["class_mean_cosine_mean"])
    band = fig.axes[0].collections[0].get_paths()[0].vertices[:, 1]
    values = [metrics_of(j)["class_mean_cosine_mean"] for j in sweep_jobs(sweep, grid_of(
        "temperature")) if j["model"] == "supcon"]
    assert band.min() == pytest.approx(min(values)) and band.max() == pytest.approx(max(values))
    # free features: the last record (iteration 50) of each run, |gap| floored at 1e-17
    for k, full, name in ((3, True, "K3-h2-full"), (10, False, "K10-h9-b8")):
        gap = line(fig, f"free/{name}/relative_gap")
        np.testing.assert_allclose(gap.get_xdata(), [0.1, 0.5])
        np.testing.assert_allclose(gap.get_ydata(), [
            max(abs(free_value(k, full, tau, 50, "gap")), 1e-17) for tau in (0.1, 0.5)])
        np.testing.assert_allclose(
            line(fig, f"free/{name}/class_mean_cosine_deviation").get_ydata(),
            [free_value(k, full, tau, 50, "dev") for tau in (0.1, 0.5)])
    assert len([g for g in gids(fig) if g.startswith("free/")]) == 2 * 4  # ce, multiset left out
    assert fig.axes[0].get_xscale() == "log"


def test_batch_size_figure_plots_gap_and_optimum_per_b_for_every_model(built):
    sweep = the_sweep(built("batch_size"), "batch_size")
    fig = plot_batch_size(sweep, dataset="digits", num_classes=K, models=MODELS)
    for model in MODELS:
        for column in ("final_supcon_gap", "supcon_optimum", "nc2_simplex_angle_deviation",
                       "sample_cosine_mean"):
            check_line(fig, f"{model}/{column}", "batch_size", lambda m, c=column: m[c])
    check_line(fig, "ce/test_accuracy_head", "batch_size", lambda m: m["test_accuracy_head"],
               scale=100.0)
    assert "supcon/test_accuracy_head" not in gids(fig)  # no head
    gap_ax = fig.axes[0]
    assert gap_ax.get_xscale() == "log" and gap_ax.xaxis.get_transform().base == 2
    assert [t.get_text() for t in gap_ax.get_xticklabels()] == ["32", "256"]


def test_imbalance_figure_plots_groups_heads_and_per_class_accuracies(built):
    inputs, grid = built("imbalance"), grid_of("imbalance")
    sweep = the_sweep(inputs, "imbalance")
    jobs = sweep_jobs(sweep, grid)
    accuracies = load_class_accuracies(
        run_files(stage_table.GEOMETRY_METRICS, inputs["geometry_dir"], jobs), jobs)
    assert len(accuracies) == len(jobs) * K
    fig = plot_imbalance(sweep, accuracies, dataset="digits", num_classes=K, models=MODELS)
    for model in MODELS:
        for group in ("majority", "minority", "across"):
            check_line(fig, f"{model}/class_mean_cosine_{group}", "imbalance",
                       lambda m, g=group: m[f"class_mean_cosine_{g}"])
        for group in ("majority", "minority"):
            check_line(fig, f"{model}/test_accuracy_{group}", "imbalance",
                       lambda m, g=group: m[f"test_accuracy_{g}"], scale=100.0)
        for c in range(K):  # class 3 of seed 1 has no test sample: the mean is seed 0's
            check_line(fig, f"{model}/class{c}", "imbalance",
                       lambda m, c=c: m["test_accuracy_by_class"][c], scale=100.0)
    for group in ("majority", "minority", "across"):  # heads: CE models only
        check_line(fig, f"ce/head_cosine_{group}", "imbalance",
                   lambda m, g=group: m[f"head_cosine_{g}"])
        assert f"supcon/head_cosine_{group}" not in gids(fig)
    check_line(fig, "supcon/final_supcon_gap", "imbalance", lambda m: m["final_supcon_gap"])
    assert line(fig, "supcon/final_supcon_gap").get_ydata()[-1] < 0  # rho 10: below the simplex
    assert "ce/final_supcon_gap" not in gids(fig)


def runs_frame(rows: list[tuple]) -> pd.DataFrame:
    """A runs table of (model, rho, tau, b, noise, seed) rows of digits, unaugmented."""
    return pd.DataFrame(
        [{"dataset": "digits", "imbalance_ratio": float(r), "model": m, "augmentation": "none",
          "temperature": float(t), "batch_size": int(b), "iterations": GRID["iterations"][0],
          "noise_fraction": float(p), "seed": s}
         for m, r, t, b, p, s in rows])


def test_sweeps_hold_the_other_axes_fixed_and_skip_what_has_one_value(caplog):
    grid = {**GRID, "temperatures": [0.05, 0.1, 0.5], "batch_sizes": [32, 256]}
    rows = [("supcon", 1, t, 256, p, 0) for t in (0.05, 0.1, 0.5) for p in (0.0, 0.5)]
    rows += [("supcon", 1, 0.1, 32, 0.0, 0), ("ce", 1, 0.1, 32, 0.0, 0),
             ("ce", 1, 0.1, 256, 0.0, 0)]
    caplog.set_level(logging.INFO, logger="pipeline.report.sweep_plots")
    found = sweeps(runs_frame(rows), grid)
    assert [s.stem("digits") for s in found] == [
        "temperature_digits-rho1-b256-T3000",  # at b = 32 supcon has one tau
        "batch_size_digits-rho1-tau0.1-T3000",  # at tau 0.05 and 0.5 the runs have one b
    ]
    temperature, batch = found
    assert set(temperature.runs["noise_fraction"]) == {0.0}  # the grid's lowest
    assert sorted(temperature.runs["temperature"]) == [0.05, 0.1, 0.5]
    assert set(temperature.runs["batch_size"]) == {256}
    assert set(temperature.runs["model"]) == {"supcon"}  # tau trains no ce model differently
    assert sorted(batch.runs["batch_size"]) == [32, 32, 256, 256]
    assert set(batch.runs["temperature"]) == {0.1}
    for skipped in ("temperature figure of digits/none at rho1-b32-T3000: not drawn, its runs "
                    "have one temperature",
                    "batch_size figure of digits/none at rho1-tau0.05-T3000: not drawn, its "
                    "runs have one batch_size"):
        assert skipped in caplog.text
    # a temperature sweep of the ce models alone is not drawn
    assert sweeps(runs_frame([("ce", 1, t, 256, 0.0, 0) for t in (0.05, 0.5)]),
                  {**GRID, "temperatures": [0.05, 0.5]}) == []
    assert "no supcon model among its runs" in caplog.text
    # one value per setting axis (the paper's protocol, the default grid): no sweep at all
    assert sweeps(runs_frame([("supcon", 1, 0.1, 256, 0.0, s) for s in (0, 1)]), GRID) == []
    # one axis swept: the stem does not name the others
    one = sweeps(runs_frame([("ce", 1, 0.1, b, 0.0, 0) for b in (32, 256)]),
                 {**GRID, "batch_sizes": [32, 256]})
    assert [s.stem("digits-standard") for s in one] == ["batch_size_digits-standard"]


def test_fixed_axes_are_spelled_as_the_setting_name_spells_them():
    row = {"imbalance_ratio": 10.0, "temperature": 0.05, "batch_size": 32, "iterations": 300}
    assert fixed_name(row) == setting_name(row) == "rho10-tau0.05-b32-T300"
    assert fixed_name({"imbalance_ratio": 1.5, "batch_size": 256}) == "rho1.5-b256"


def test_every_sweep_figure_is_filed_in_the_report_under_its_kind():
    """rules/figures.smk files each PNG by the kind its stem starts with: the sweep figures'
    stems (also with the fixed settings named) must match its pattern as Snakemake reads it."""
    import ast
    import re

    from snakemake.io import regex_from_filepattern

    from pipeline.report import sweep_plots

    text = (ROOT / "rules" / "figures.smk").read_text()
    categories = ast.literal_eval(re.search(r"FIGURE_CATEGORIES = (\{.*?\n\})", text,
                                            re.DOTALL).group(1))
    template = re.search(r'FIGURE_PATTERN = "(.*?)" % ', text).group(1)
    pattern = re.compile(regex_from_filepattern(template % "|".join(categories)))
    for kind in sweep_plots.SWEEPS.values():
        assert "beyond the paper" in categories[kind]
        for stem in (f"{kind}_digits", f"{kind}_cifar10-standard-rho1-b256"):
            found = pattern.fullmatch(f"{stem}.png")
            assert found and found.group("kind") == kind, stem
