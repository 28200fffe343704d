"""The `paper` preset encodes docs/paper.md's protocol, and runs end to end when cut down."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, copy_project, sh, tiny_params

from pipeline.infra import datasets, stage_table
from pipeline.infra.config import load_params
from pipeline.infra.datasets import CIFAR
from pipeline.infra.io import read_metadata
from pipeline.infra.runs import Run, setting_name
from pipeline.maths.imbalance import imbalanced_counts

PRESET = ROOT / "presets" / "paper.yaml"

# docs/paper.md, "Protocol of the paper's experiments", field by field.
PROTOCOL = {
    "grid.datasets": ["cifar10", "cifar100"],
    "grid.models": ["supcon", "ce", "ce_fixed"],
    "grid.augmentations": ["none", "standard"],  # geometry study: both
    "grid.noise_fractions": [round(0.1 * i, 1) for i in range(11)],
    "noisy_labels.scheme": "flip",
    "train.common.encoder": "resnet18",
    "train.common.representation_dim": 512,
    "grid.iterations": [100_000],
    "train.common.schedule": "exponential",
    "train.common.momentum": 0.9,
    "train.common.weight_decay": 1e-4,
    "grid.temperatures": [0.1],
    "grid.batch_sizes": [256],
    "grid.imbalance_ratios": [1],
    "train.common.eval_every": 500,
    "train.models.supcon.learning_rate": 0.1,
    "train.models.ce.learning_rate": 0.1,
    "train.models.ce_fixed.learning_rate": 0.1,
    "train.models.ce_fixed.head_norm": 1.0,
    "geometry.fit_threshold": 1.0,
}


def get(params: dict, dotted: str):
    for part in dotted.split("."):
        params = params[part]
    return params


@pytest.mark.parametrize("key,expected", PROTOCOL.items())
def test_paper_preset_matches_the_protocol(key, expected):
    assert get(load_params(PRESET), key) == expected


def paper_runs() -> set[tuple]:
    """docs/paper.md's runs, one tuple (dataset, model, augmentation, noise, seed) each: the noise
    study (Section 5.3) without augmentation over p in {0, 0.1, ..., 1.0}, and the geometry
    study (Section 5.2) at p = 0 with the standard augmentation; both datasets, all three
    models, seeds 0-2."""
    datasets, models, seeds = ("cifar10", "cifar100"), ("supcon", "ce", "ce_fixed"), (0, 1, 2)
    noise = [round(0.1 * i, 1) for i in range(11)]
    noise_study = itertools.product(datasets, models, ["none"], noise, seeds)
    geometry_study = itertools.product(datasets, models, ["standard"], [0.0], seeds)
    return set(noise_study) | set(geometry_study)


def test_paper_preset_runs_exactly_the_protocols_216_runs():
    jobs = stage_table.grid_jobs(stage_table.TRAIN, load_params(PRESET)["grid"])
    # the paper's five values of a run; its setting is the paper's one (rho 1, tau 0.1, b 256)
    runs = [(r.dataset, r.model, r.augmentation, r.noise_fraction, r.seed)
            for r in map(Run.of, jobs)]
    assert {setting_name(Run.of(j).columns()) for j in jobs} == {"rho1-tau0.1-b256-T100000"}
    assert len(runs) == len(set(runs)) == 216
    assert set(runs) == paper_runs()
    # every run's noisy labels once: the geometry study reuses the noise study's p = 0 labels
    labels = stage_table.grid_jobs(stage_table.NOISY_LABELS, load_params(PRESET)["grid"])
    assert len(labels) == 2 * 11 * 3


def test_paper_preset_reads_the_official_archives():
    params = load_params(PRESET)
    for name in ("cifar10", "cifar100"):
        assert params["datasets"][name] == {"archive": f"data/raw/{CIFAR[name].filename}"}
    assert len(load_params(PRESET)["grid"]["seeds"]) >= 2  # a spread across seeds


# ----------------------------------------------------------------------------- multiview

MULTIVIEW = ROOT / "presets" / "multiview.yaml"


def test_multiview_preset_applies_the_switch():
    params = load_params(MULTIVIEW)
    grid = params["grid"]
    assert grid["datasets"] == ["digits"]
    assert {"supcon", "supcon_mv"} <= set(grid["models"])
    assert grid["noise_fractions"] == [0.0, 0.4, 0.8] and grid["seeds"] == [0, 1, 2]
    assert params["train"]["models"]["supcon_mv"]["view_augmentation"] == "shift"  # 8x8 images
    jobs = stage_table.grid_jobs(stage_table.TRAIN, grid)
    assert len(jobs) == len(grid["models"]) * 3 * 3  # one product: every model, p and seed


def test_multiview_preset_is_params_yaml_but_for_the_grid_and_the_new_model():
    """Like for like with the default run: same data, encoder, optimiser, supcon and ce."""
    preset, default = load_params(MULTIVIEW), load_params(ROOT / "params.yaml")
    assert preset["train"]["models"].pop("supcon_mv")["learning_rate"] == (
        default["train"]["models"]["supcon"]["learning_rate"]
    )
    assert {k: v for k, v in preset.items() if k != "grid"} == (
        {k: v for k, v in default.items() if k != "grid"}
    )


def test_multiview_preset_states_its_measured_run_time():
    import re

    assert re.search(r"Measured: .*\d+ min .*--cores 1", MULTIVIEW.read_text())


@pytest.mark.e2e
def test_multiview_preset_cut_to_a_few_iterations_runs_end_to_end(tmp_path):
    """The real Snakefile on the preset, cut to a few SGD steps, one seed, supcon_mv and the
    supcon it is drawn beside, the lowest and highest noise (two: what claims (iii) and (iv)
    need) and the tiny free features: supcon_mv gets summary rows, claims rows (ii, iii, iv)
    and a panel beside supcon."""
    project = copy_project(tmp_path / "project")
    preset = yaml.safe_load(MULTIVIEW.read_text())
    noise = preset["grid"]["noise_fractions"]
    preset["grid"].update(seeds=[0], batch_sizes=[32], models=["supcon", "supcon_mv"],
                          noise_fractions=[noise[0], noise[-1]])
    preset["grid"]["iterations"] = [20]
    preset["train"]["common"].update(eval_every=10, hidden_dims=[16])
    preset["free_features"] = tiny_params()["free_features"]
    cut = project / "multiview-cut.yaml"
    cut.write_text(yaml.safe_dump(preset))
    sh(sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(cut), cwd=project)
    summary = pd.read_csv(project / "data/summary/summary.csv")
    assert sorted(summary.loc[summary.model == "supcon_mv", "noise_fraction"]) == [0.0, 0.8]
    claims = pd.read_csv(project / "data/claims/claims.csv")
    assert set(claims.loc[claims.model == "supcon_mv", "claim"]) == {"ii", "iii", "iv"}
    growth = claims[(claims.claim == "iv") & (claims.model == "supcon_mv")].iloc[0]
    assert growth.criterion == "> 1"  # held to supcon's claim
    figures = {p.name for p in (project / "data/figures").iterdir()}
    assert {"geometry_digits.png", "iterations_to_fit_digits.png"} <= figures


# ----------------------------------------------------------------------------- sweeps
# Issue 15, items 1-3: one preset per setting axis, each sweeping that axis alone.

SWEEPS = {  # preset -> (its axis, the values it sweeps, claims id, figure kind)
    "temperature": ("temperatures", [0.05, 0.1, 0.2, 0.5, 1.0], "T", "temperature"),
    "batch_size": ("batch_sizes", [32, 128, 512], "B", "batch_size"),
    "imbalance": ("imbalance_ratios", [1, 3, 10, 30], "R", "imbalance"),
}


def sweep_preset(name: str):
    return ROOT / "presets" / f"{name}.yaml"


@pytest.mark.parametrize("name", SWEEPS)
def test_a_sweep_preset_sweeps_one_setting_axis(name):
    axis, values, _, _ = SWEEPS[name]
    grid = load_params(sweep_preset(name))["grid"]
    assert grid[axis] == values
    default = load_params(ROOT / "params.yaml")["grid"]
    for other in ("imbalance_ratios", "temperatures", "batch_sizes"):
        if other != axis:  # the other settings stay the default run's
            assert grid[other] == default[other], other
    assert grid["noise_fractions"] == [0.0] and grid["seeds"] == [0, 1, 2]


@pytest.mark.parametrize("name", SWEEPS)
def test_a_sweep_preset_is_params_yaml_but_for_the_grid(name):
    """Like for like with the default run: same data, encoder, optimiser and losses; the
    temperature sweep also runs the free features at its temperatures."""
    preset, default = load_params(sweep_preset(name)), load_params(ROOT / "params.yaml")
    if name == "temperature":
        assert preset["free_features"].pop("temperatures") == preset["grid"]["temperatures"]
        default["free_features"].pop("temperatures")
    assert {k: v for k, v in preset.items() if k != "grid"} == (
        {k: v for k, v in default.items() if k != "grid"}
    )


@pytest.mark.parametrize("name", SWEEPS)
def test_a_sweep_preset_states_its_measured_run_time(name):
    import re

    line = re.search(r"# Measured by `python benchmarks/time_presets.py --write-doc`: (.*)",
                     sweep_preset(name).read_text())
    assert line and re.search(r"\d+ min \d+ s", line.group(1)), line


@pytest.mark.e2e
@pytest.mark.parametrize("name", SWEEPS)
def test_a_sweep_preset_cut_to_a_few_iterations_runs_end_to_end(tmp_path, name):
    """The real Snakefile on the preset, cut to a few SGD steps, one seed, two values of its
    axis and the tiny free features: summary rows per value, the extension's claims rows and
    its figure."""
    axis, values, claim, kind = SWEEPS[name]
    project = copy_project(tmp_path / "project")
    preset = yaml.safe_load(sweep_preset(name).read_text())
    cut_values = [values[0], values[-1]]
    small = {"batch_sizes": [16]} if axis != "batch_sizes" else {}
    preset["grid"].update(seeds=[0], models=preset["grid"]["models"][:2], **small,
                          **{axis: cut_values})
    preset["grid"]["iterations"] = [20]
    preset["train"]["common"].update(eval_every=10, hidden_dims=[16])
    preset["free_features"] = tiny_params()["free_features"]
    if name == "temperature":
        preset["free_features"]["temperatures"] = cut_values
    cut = project / f"{name}-cut.yaml"
    cut.write_text(yaml.safe_dump(preset))
    sh(sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(cut), cwd=project)
    summary = pd.read_csv(project / "data/summary/summary.csv")
    column = {"temperatures": "temperature", "batch_sizes": "batch_size",
              "imbalance_ratios": "imbalance_ratio"}[axis]
    assert sorted(summary[column].unique()) == sorted(float(v) for v in cut_values)
    claims = pd.read_csv(project / "data/claims/claims.csv")
    assert claim in set(claims["claim"])
    figures = {p.name for p in (project / "data/figures").iterdir()}
    assert {f"{kind}_digits.png", f"{kind}_digits.pdf"} <= figures
    if name == "imbalance":  # the labels record the thinned split, as the profile says
        labels = project / "data/labels/digits/rho30/noise0.0-seed0.parquet"
        meta = read_metadata(labels)["noisy_labels"]["imbalance"]
        assert (meta["profile"], meta["seed"], meta["ratio"]) == ("step", 0, 30.0)
        split = datasets.load("digits", preset["datasets"]["digits"]).train.labels
        expected = imbalanced_counts(np.bincount(split, minlength=10), "step", 30.0)
        assert meta["class_counts"] == expected.tolist()
        assert pq.read_table(labels).num_rows == expected.sum()


# ----------------------------------------------------------------------------- multiview, CIFAR

MULTIVIEW_CIFAR = ROOT / "presets" / "multiview_cifar.yaml"


def test_multiview_cifar_preset_is_the_paper_protocol_plus_supcon_mv():
    """Issue 15 item 4 at the paper's scale: supcon_mv beside the paper's three models, its
    views made by the standard CIFAR augmentation; every other field the paper preset's."""
    preset, paper = load_params(MULTIVIEW_CIFAR), load_params(PRESET)
    assert preset["train"]["models"].pop("supcon_mv") == {"learning_rate": 0.1,
                                                          "view_augmentation": "standard"}
    assert preset["grid"].pop("models") == ["supcon", "supcon_mv", "ce", "ce_fixed"]
    paper["grid"].pop("models")
    assert preset == paper
    jobs = stage_table.grid_jobs(stage_table.TRAIN, load_params(MULTIVIEW_CIFAR)["grid"])
    runs = {(r.dataset, r.model, r.augmentation, r.noise_fraction, r.seed)
            for r in map(Run.of, jobs)}
    # the paper's 216 runs, and supcon_mv in both of its studies: 72 more
    mv = {run for run in runs if run[1] == "supcon_mv"}
    assert runs - mv == paper_runs() and len(mv) == 72
    assert {(d, "supcon_mv", a, p, s) for d, _, a, p, s in paper_runs()} == mv


# ----------------------------------------------------------------------------- claims on CPU
# Issue 22: presets/claims_cpu.yaml judges every claim on both embedded datasets.

CLAIMS_CPU = ROOT / "presets" / "claims_cpu.yaml"


def test_claims_cpu_preset_is_params_yaml_but_for_the_grid_and_the_evaluation_grain():
    """Same data, encoder, optimiser, losses and, above all, the same claims criteria and
    regimes as the default run: the study is not tuned toward a verdict."""
    preset, default = load_params(CLAIMS_CPU), load_params(ROOT / "params.yaml")
    assert preset["train"]["common"].pop("eval_every") == 10
    default["train"]["common"].pop("eval_every")
    assert {k: v for k, v in preset.items() if k != "grid"} == (
        {k: v for k, v in default.items() if k != "grid"})


def test_claims_cpu_preset_trains_every_model_on_both_datasets_and_three_times_as_long_at_p0():
    grid = load_params(CLAIMS_CPU)["grid"]
    jobs = [Run.of(j) for j in stage_table.grid_jobs(stage_table.TRAIN, grid)]
    assert {r.dataset for r in jobs} == {"digits", "mnist5k"}
    short, long = sorted({r.iterations for r in jobs})
    assert long == 3 * short
    at_long = {(r.dataset, r.model, r.seed) for r in jobs if r.iterations == long}
    assert {r.noise_fraction for r in jobs if r.iterations == long} == {0.0}
    # every noise-0 run of the short length has its long twin, so (ii) sees both lengths
    assert at_long == {(r.dataset, r.model, r.seed) for r in jobs
                       if r.iterations == short and r.noise_fraction == 0.0}
    assert len(jobs) == 108


@pytest.mark.e2e
def test_claims_cpu_preset_cut_down_runs_and_its_doc_is_generated_and_checked(tmp_path):
    """The real Snakefile on the preset cut to ce on digits, two seeds, T = 20 and 60: (ii)
    pools both lengths and names the trend; `results --preset` writes the doc and README
    block, `--check` passes on them and fails on an edit; another grid's outputs are refused."""
    project = copy_project(tmp_path / "project")
    preset = yaml.safe_load(CLAIMS_CPU.read_text())
    preset["grid"].update(datasets=["digits"], models=["ce"], noise_fractions=[0.0, 0.5],
                          seeds=[0, 1], iterations=[20, 60], batch_sizes=[32])
    preset["grid"]["run_sets"] = {"growth": {"iterations": [20]},
                                  "length": {"iterations": [60], "noise_fractions": [0.0]}}
    preset["train"]["common"].update(eval_every=10, hidden_dims=[16])
    preset["free_features"] = tiny_params()["free_features"]
    cut = project / "presets" / "claims_cpu_cut.yaml"
    cut.write_text(yaml.safe_dump(preset))
    sh(sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(cut), cwd=project)
    claims = pd.read_csv(project / "data/claims/claims.csv")
    (nc2,) = claims[(claims.claim == "ii") & (claims.key == "nc2")].itertuples()
    assert nc2.setting == "rho1-tau0.1-b32-T60"  # one row, named by the longest T
    runs = pd.read_parquet(project / "data/summary/runs.parquet")
    longest = runs[(runs.noise_fraction == 0.0) & (runs.iterations == 60)]
    assert len(longest) == 2 and nc2.value == pytest.approx(
        longest.nc2_simplex_angle_deviation.mean(), rel=1e-5)  # the value: T = 60 alone
    assert set(claims.loc[claims.claim == "iv", "setting"]) == {"rho1-tau0.1-b32-T20"}
    results = [sys.executable, "-m", "pipeline", "results", "--preset",
               "presets/claims_cpu_cut.yaml"]
    no_block = subprocess.run(results, cwd=project, capture_output=True, text=True)
    assert no_block.returncode == 2 and "<!-- results:claims_cpu_cut:begin -->" in (
        no_block.stderr) and "Traceback" not in no_block.stderr
    # a block of its own, by the preset's name, in README and in the paper notes (filled where
    # there is one)
    notes = project / "docs/paper.md"
    for doc in (project / "README.md", notes):
        doc.write_text(doc.read_text().replace(
            "<!-- results:claims_cpu:begin -->",
            "<!-- results:claims_cpu_cut:begin -->\n<!-- results:claims_cpu_cut:end -->\n"
            "<!-- results:claims_cpu:begin -->"))
    sh(*results, cwd=project)
    block = notes.read_text().split("<!-- results:claims_cpu_cut:begin -->")[1]
    assert "(ii) at noise 0" in block and "](claims_cpu_cut.md)." in block  # linked from docs/
    doc = (project / "docs/claims_cpu_cut.md").read_text()
    assert doc.startswith("# Results of preset claims_cpu_cut")
    assert "| ii | digits, none, rho1-tau0.1-b32-T60 | ce |" in doc
    assert "(ii) at noise 0" in (project / "README.md").read_text()
    sh(*results, "--check", cwd=project)
    (project / "docs/claims_cpu_cut.md").write_text(doc.replace("b32-T60 | ce", "b32-T9 | ce"))
    failed = subprocess.run([*results, "--check"], cwd=project, capture_output=True, text=True)
    assert failed.returncode == 1 and "docs/claims_cpu_cut.md" in failed.stderr
    (project / "docs/claims_cpu_cut.md").write_text(doc)
    head, block = notes.read_text().split("<!-- results:claims_cpu_cut:begin -->")
    notes.write_text(head + "<!-- results:claims_cpu_cut:begin -->"
                     + block.replace("(ii) at noise 0", "(ii) at noise 1", 1))
    failed = subprocess.run([*results, "--check"], cwd=project, capture_output=True, text=True)
    assert failed.returncode == 1 and "docs/paper.md" in failed.stderr
    other = subprocess.run([sys.executable, "-m", "pipeline", "results", "--preset",
                            "presets/claims_cpu.yaml"], cwd=project, capture_output=True,
                           text=True)
    assert other.returncode == 2 and "made for another grid than" in other.stderr
    assert "grid.datasets" in other.stderr
