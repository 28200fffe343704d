"""Stage claims: every verdict follows from the measured interval and the params' criterion."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from conftest import ROOT
from scipy.stats import ConstantInputWarning, spearmanr

from pipeline.infra.io import InputError, file_md5, write_json, write_parquet
from pipeline.infra.runs import SETTING, setting_name
from pipeline.stages import claims

TOLERANCES = yaml.safe_load((ROOT / "params.yaml").read_text())["claims"]


def runs_table(noise=(0.0, 0.5), seeds=(0, 1, 2)) -> pd.DataFrame:
    rows = []
    for model, deviation, collapse in (("supcon", 0.01, 0.999), ("ce", 0.3, 0.9)):
        for p in noise:
            for seed in seeds:
                rows.append({
                    "dataset": "digits", "model": model, "augmentation": "none",
                    "imbalance_ratio": 1.0, "temperature": 0.1, "batch_size": 256,
                    "iterations": 3000,
                    "noise_fraction": p, "seed": seed,
                    "nc2_simplex_angle_deviation": deviation + 0.001 * seed,
                    "sample_cosine_mean": collapse, "nc1": 0.01,
                    "nc3_self_duality": np.nan if model == "supcon" else 0.1,
                    "nc4_head_ncm_agreement": np.nan if model == "supcon" else 1.0,
                    # the gap grows with p and accuracy falls: a negative rank correlation
                    "final_loss_gap": 0.01 + p + 0.001 * seed,
                    "test_accuracy_class_mean": 0.95 - p - 0.001 * seed,
                    # in the regimes the claims need: the fit held for 2/3 of T, fit times
                    # 40x the evaluation grain, growing with p (the CE control visible)
                    "final_iteration": 3000, "iterations_held_fit": 2000,
                    "evaluation_interval": 50,
                    "iterations_to_fit": 1000 + 2000 * p + 10 * seed,
                })
    return pd.DataFrame(rows)


def free_table() -> pa.Table:
    rows = []
    for loss, tau, gap, dev in (("supcon", 0.5, 1e-15, 1e-10), ("supcon", 0.1, 3e-4, 0.7),
                                ("ce_fixed", None, 1e-16, 1e-16)):
        rows.append({"experiment": "grid", "loss_name": loss, "num_classes": 3, "dim": 2,
                     "full_batch": True, "temperature": tau, "iteration": 100,
                     "relative_gap": gap, "class_mean_cosine_deviation": dev})
    return pa.Table.from_pylist(rows)


GROWTH = {"digits": {"none": {"rho1-tau0.1-b256-T3000": {
    "supcon": {"exponent": 1.6, "exponent_ci95": [1.2, 2.0], "runs_used": 3, "runs_not_fit": 1},
    "ce": {"exponent": 0.9, "exponent_ci95": [0.7, 1.1], "runs_used": 3, "runs_not_fit": 0},
}}}}


# The grid aggregate records in both of its outputs that claims reads (any grid: claims
# only checks that the two agree).
RECORDED_GRID = {"datasets": ["digits"], "seeds": [0, 1, 2]}


def tabulate(directory, runs: pd.DataFrame, growth: dict = GROWTH, grid=RECORDED_GRID):
    """Run the stage on ``runs`` (with ``growth`` and free_table()); (frame, output paths).
    ``grid``: what growth.json records (the runs table records RECORDED_GRID)."""
    directory.mkdir(parents=True, exist_ok=True)
    write_parquet(pa.Table.from_pandas(runs, preserve_index=False), directory / "runs.parquet",
                  metadata={"grid": RECORDED_GRID})
    write_json({**growth, "grid": grid, "inputs": {"runs": file_md5(directory / "runs.parquet")}},
               directory / "growth.json")
    write_parquet(free_table(), directory / "free.parquet")
    out = {"table": directory / "claims.csv", "markdown_table": directory / "claims.md",
           "verdicts": directory / "verdicts.json"}
    frame = claims.tabulate_claims({"claims": TOLERANCES}, runs=directory / "runs.parquet",
                                   growth=directory / "growth.json",
                                   free_features=directory / "free.parquet", **out)
    return frame, out


@pytest.fixture
def table(tmp_path):
    return tabulate(tmp_path, runs_table())


def verdict_of(frame, claim, model, measure_start):
    rows = frame[(frame.claim == claim) & (frame.model == model)
                 & frame.measure.str.startswith(measure_start)]
    assert len(rows) == 1, (claim, model, measure_start)
    return rows.iloc[0]


def test_free_features_verdicts(table):
    frame, _ = table
    assert verdict_of(frame, "i", "supcon (tau = 0.5)", "max |relative").verdict == "replicates"
    assert verdict_of(frame, "i", "supcon (tau = 0.1)", "max |cos").verdict == "does not"
    assert verdict_of(frame, "i", "ce_fixed", "max |relative").verdict == "replicates"


def test_simplex_verdicts_use_the_interval_over_seeds(table):
    frame, _ = table
    row = verdict_of(frame, "ii", "supcon", "class means")
    assert row.value == pytest.approx(0.011)  # mean over seeds 0.010, 0.011, 0.012
    assert 0.010 - 1e-12 <= row.ci_low <= row.value <= row.ci_high <= 0.012 + 1e-12
    assert row.verdict == "replicates"
    # one training length: a measure off its criterion is not yet a "does not" (below)
    for measure in ("class means", "sample-to"):
        row = verdict_of(frame, "ii", "ce", measure)
        assert row.ci_high < 0.99 and row.verdict == (
            "not reached: training length not swept (T = 3000 only): a measure still "
            "improving with T cannot be told from a flat one")
    assert verdict_of(frame, "ii", "ce", "NC4").verdict == "replicates"
    assert not ((frame.claim == "ii") & (frame.model == "supcon")
                & frame.measure.str.startswith("NC3")).any()  # no head, no NC3


def test_generalisation_and_growth_verdicts(table):
    frame, _ = table
    row = verdict_of(frame, "iii", "supcon", "Spearman")
    assert row.value == pytest.approx(-1.0) and row.verdict == "replicates"
    assert verdict_of(frame, "iv", "supcon", "growth").verdict == "replicates"  # [1.2, 2.0] > 1
    assert verdict_of(frame, "iv", "ce", "growth").verdict == "replicates"  # 1 in [0.7, 1.1]


@pytest.mark.parametrize(("ci", "above", "expected"), [
    ((1.1, 1.5), True, "replicates"), ((0.2, 0.9), True, "does not"),
    ((0.9, 1.2), True, "inconclusive"), ((0.2, 0.9), False, "replicates"),
    (None, True, "inconclusive")])
def test_verdict_from_interval(ci, above, expected):
    assert claims.verdict(ci, 1.0, claim_above=above) == expected


def test_growth_fits_of_another_grid_are_refused_by_name(tmp_path):
    """A growth.json of another aggregate run (same shape, other seeds) beside this runs
    table: one named error, the differing key and both values, and no table written."""
    other = {**RECORDED_GRID, "seeds": [0, 1]}
    with pytest.raises(claims.InputError) as error:
        tabulate(tmp_path, runs_table(), grid=other)
    assert str(error.value) == (
        f"{tmp_path / 'growth.json'}: growth fits made for another grid than "
        f"{tmp_path / 'runs.parquet'}: grid.seeds: [0, 1], expected [0, 1, 2]")
    assert not (tmp_path / "claims.csv").exists()



def test_growth_fits_of_another_runs_table_of_the_same_grid_are_refused(tmp_path):
    """Issue 23: a runs table swapped for another one of the same grid (same shape, other
    numbers) under growth fits made from the first: the md5 they record names it."""
    tabulate(tmp_path, runs_table())
    made_from = json.loads((tmp_path / "growth.json").read_text())["inputs"]["runs"]
    swapped = runs_table()
    swapped["nc1"] = swapped["nc1"] + 0.01
    write_parquet(pa.Table.from_pandas(swapped, preserve_index=False), tmp_path / "runs.parquet",
                  metadata={"grid": RECORDED_GRID})
    (tmp_path / "claims.csv").unlink()
    with pytest.raises(InputError) as error:
        claims.tabulate_claims({"claims": TOLERANCES}, runs=tmp_path / "runs.parquet",
                               growth=tmp_path / "growth.json",
                               free_features=tmp_path / "free.parquet",
                               table=tmp_path / "claims.csv",
                               markdown_table=tmp_path / "claims.md",
                               verdicts=tmp_path / "verdicts.json")
    assert str(error.value).startswith(
        f"{tmp_path / 'growth.json'}: made from runs with md5 {made_from} (field inputs.runs), "
        f"but {tmp_path / 'runs.parquet'} has md5 ")
    assert not (tmp_path / "claims.csv").exists()

def test_outputs_markdown_and_metrics(table):
    frame, out = table
    text = out["markdown_table"].read_text()
    assert text.count("\n") == len(frame) + 2  # header, rule, one line per row
    assert r"max \|relative gap\|" in text  # pipes escaped: the row keeps its 9 cells
    assert all(line.count(" | ") == 8 for line in text.splitlines()[2:])
    verdicts = json.loads(out["verdicts"].read_text())
    assert verdicts.pop("numerics")["mode"] == "portable"  # how the stage computed
    # One short verdict per row, named "<claim>/<data>/<model>/<key>" (one setting: the
    # dataset alone names the data); the reasons and numbers stay in the table.
    assert len(verdicts) == len(frame)
    assert verdicts["iv/digits/supcon/growth"] == "replicates"
    assert verdicts["i/free_features/supcon_tau_0.5/gap"] == frame.loc[
        (frame.claim == "i") & (frame.model == "supcon (tau = 0.5)")
        & (frame.key == "gap"), "verdict"].item()
    assert set(verdicts.values()) <= {"replicates", "does not", "inconclusive", "not reached",
                                      claims.NO_VERDICT}
    assert all(" " not in name for name in verdicts)  # a column header of `dvc exp show`
    assert pd.read_csv(out["table"]).shape == (len(frame), len(claims.COLUMNS))


# ------------------------------------------------------- extensions T, B, R (issue 15)

DEFAULT_SETTING = {"imbalance_ratio": 1.0, "temperature": 0.1, "batch_size": 256,
                   "iterations": 3000}
BASE_METRICS = {"nc2_simplex_angle_deviation": 0.01, "sample_cosine_mean": 0.999, "nc1": 0.01,
                "nc3_self_duality": np.nan, "nc4_head_ncm_agreement": np.nan,
                "final_loss_gap": 0.01, "final_supcon_gap": 0.01,
                "test_accuracy_class_mean": 0.9, "test_accuracy_majority": 0.9,
                "test_accuracy_minority": 0.9, "head_cosine_minority": np.nan,
                # in the terminal phase: the fit held for 2/3 of T
                "final_iteration": 3000, "iterations_held_fit": 2000}
THRESHOLD = TOLERANCES["simplex_cosine_deviation"]


def sweep_runs(sweep: dict, metrics, models=("supcon",), seeds=(0, 1, 2),
               noise=(0.0,)) -> pd.DataFrame:
    """Runs over the product of ``sweep`` (axis -> values; the other axes at the default
    setting); ``metrics(model, setting, seed, p)`` overrides BASE_METRICS per run."""
    rows = []
    axes = list(sweep)
    for model in models:
        for values in pd.MultiIndex.from_product(list(sweep.values())):
            setting = {**DEFAULT_SETTING, **dict(zip(axes, values, strict=True))}
            for p in noise:
                for seed in seeds:
                    rows.append({"dataset": "digits", "model": model, "augmentation": "none",
                                 **setting, "noise_fraction": p, "seed": seed,
                                 **BASE_METRICS, **metrics(model, setting, seed, p)})
    return pd.DataFrame(rows)


def rows_of(frame, claim, model=None):
    return frame[(frame.claim == claim) & ((frame.model == model) if model else True)]


def naive_spearman(runs: pd.DataFrame, axis: str, y) -> float:
    """scipy's rho over the runs at the lowest noise fraction."""
    at = runs[runs.noise_fraction == runs.noise_fraction.min()]
    return spearmanr(at[axis], y(at) if callable(y) else at[y]).statistic


def naive_threshold_verdict(values, threshold: float) -> str:
    """A bootstrap interval of a mean lies within [min, max] of the values."""
    values = np.asarray(values)
    return ("replicates" if values.max() < threshold else
            "does not" if values.min() > threshold else "inconclusive")


def test_a_sweep_setting_leaves_out_the_swept_axis_and_spells_the_rest_as_setting_name():
    for values in (DEFAULT_SETTING, {"imbalance_ratio": 12.5, "temperature": 0.05,
                                     "batch_size": 32, "iterations": 100}):
        full = setting_name(values)
        assert full.count("-") == len(SETTING) - 1
        for axis in SETTING:  # the swept part left out, the rest as setting_name spells it
            kept = [part for part, a in zip(full.split("-"), SETTING, strict=True) if a != axis]
            assert setting_name(values, left_out=(axis,)) == "-".join(kept)
    assert setting_name(DEFAULT_SETTING, left_out=("temperature",)) == "rho1-b256-T3000"
    assert setting_name(DEFAULT_SETTING) == "rho1-tau0.1-b256-T3000"


TAU_DEVIATIONS = {  # NC2 deviation at tau = 0.05, 0.1, 0.5 (plus 0.001 per seed)
    "falls": ((0.4, 0.1, 0.01), "replicates"),
    "rises": ((0.01, 0.1, 0.4), "does not"),
    "v-shaped": ((0.1, 0.01, 0.1), "inconclusive"),  # rho exactly 0
    "flat": ((0.02, 0.02, 0.02), "inconclusive"),  # no interval (constant seeds: NaN)
}


@pytest.mark.parametrize("pattern", list(TAU_DEVIATIONS))
def test_temperature_claim_against_scipy(pattern):
    levels, expected = TAU_DEVIATIONS[pattern]
    taus = (0.05, 0.1, 0.5)
    by_tau = dict(zip(taus, levels, strict=True))

    def metrics(model, setting, seed, p):
        jitter = 0.0 if pattern == "flat" else 0.001 * seed
        # at p = 0.5 the opposite trend: only the lowest noise fraction may count
        level = by_tau[setting["temperature"]] if p == 0 else 0.5 - by_tau[setting["temperature"]]
        return {"nc2_simplex_angle_deviation": level + jitter}

    runs = sweep_runs({"temperature": taus}, metrics, models=("supcon", "supcon_mv", "ce"),
                      noise=(0.0, 0.5))
    frame = pd.DataFrame(claims.temperature_claims(runs, TOLERANCES))
    assert set(frame.model) == {"supcon", "supcon_mv"}  # CE does not use tau: no T rows
    assert set(frame.setting) == {"rho1-b256-T3000"}
    for model in ("supcon", "supcon_mv"):
        rows = rows_of(frame, "T", model)
        assert list(rows.measure) == [f"tau = {t:g}: {claims.NC2_LABEL}" for t in taus] + [
            "Spearman rho(tau, NC2 mean |cos + 1/(K-1)|)"]
        at = runs[(runs.model == model) & (runs.noise_fraction == 0)]
        for tau, row in zip(taus, rows.iloc[:3].itertuples(), strict=True):
            seeds = at.loc[at.temperature == tau, claims.NC2]
            assert row.value == pytest.approx(seeds.mean())
            assert row.criterion == f"< {THRESHOLD:g}"
            assert row.verdict == naive_threshold_verdict(seeds, THRESHOLD)
        rho = rows.iloc[-1]
        assert rho.criterion == "< 0" and rho.verdict == expected
        if pattern == "flat":  # undefined for scipy too
            with pytest.warns(ConstantInputWarning):
                assert np.isnan(naive_spearman(at, "temperature", claims.NC2))
            assert pd.isna(rho.value) and pd.isna(rho.ci_low)
        else:
            assert rho.value == pytest.approx(naive_spearman(at, "temperature", claims.NC2),
                                              abs=1e-12)
            assert rho.ci_low <= rho.value <= rho.ci_high
    if pattern == "falls":
        assert rows_of(frame, "T", "supcon").iloc[:3].verdict.tolist() == [
            "does not", "does not", "replicates"]  # 0.4, 0.1 > 0.05 > 0.01
        assert rows_of(frame, "T", "supcon").iloc[-1].ci_high < 0


def test_batch_size_claim_against_scipy():
    bs = (32, 128, 512)
    supcon_deviation = {32: 0.2, 128: 0.04, 512: 0.01}
    gap = {32: 0.3, 128: 0.1, 512: 0.2}  # no direction predicted: reported, not judged

    def metrics(model, setting, seed, p):
        b = setting["batch_size"]
        return {"nc2_simplex_angle_deviation": (supcon_deviation[b] if model == "supcon"
                                                else 0.3) + 0.001 * seed,
                "final_supcon_gap": gap[b] + 0.01 * seed}

    runs = sweep_runs({"batch_size": bs}, metrics, models=("supcon", "ce"))
    frame = pd.DataFrame(claims.batch_size_claims(runs, TOLERANCES))
    assert set(frame.setting) == {"rho1-tau0.1-T3000"}
    supcon, ce = rows_of(frame, "B", "supcon"), rows_of(frame, "B", "ce")
    assert supcon.verdict.tolist()[:3] == ["does not", "replicates", "replicates"]
    assert ce.verdict.tolist()[:3] == ["does not"] * 3  # 0.3 at every b
    assert supcon.measure.iloc[0] == f"b = 32: {claims.NC2_LABEL}"
    for rows, model in ((supcon, "supcon"), (ce, "ce")):
        at = runs[runs.model == model]
        row = rows[rows.measure == "Spearman rho(b, final supcon gap)"].iloc[0]
        assert row.value == pytest.approx(naive_spearman(at, "batch_size", "final_supcon_gap"))
        assert (row.criterion, row.verdict) == (claims.NO_CRITERION, claims.NO_VERDICT)
        assert row.ci_low < 0 < row.ci_high
    row = supcon[supcon.measure.str.startswith("Spearman rho(b, NC2")].iloc[0]
    assert row.value == pytest.approx(naive_spearman(runs[runs.model == "supcon"],
                                                     "batch_size", claims.NC2))
    assert (row.criterion, row.verdict) == ("< 0", "replicates") and row.ci_high < 0
    assert not ce.measure.str.startswith("Spearman rho(b, NC2").any()  # supcon family only
    assert len(supcon) == 5 and len(ce) == 4


def test_imbalance_claim_against_scipy():
    ratios = (1.0, 10.0, 100.0)
    deviation = {1.0: 0.01, 10.0: 0.03, 100.0: 0.2}
    head_minority = {1.0: -1 / 9, 10.0: 0.3, 100.0: 0.9}
    minority = {1.0: 0.9, 10.0: 0.7, 100.0: 0.2}

    def metrics(model, setting, seed, p):
        r = setting["imbalance_ratio"]
        return {"nc2_simplex_angle_deviation": deviation[r] + 0.001 * seed,
                "head_cosine_minority": (np.nan if model == "supcon" else -1 / 9
                                         if model == "ce_fixed" else head_minority[r]),
                "test_accuracy_majority": 0.9,
                "test_accuracy_minority": minority[r] + 0.002 * (seed - 1)}

    runs = sweep_runs({"imbalance_ratio": ratios}, metrics, models=("supcon", "ce", "ce_fixed"))
    frame = pd.DataFrame(claims.imbalance_claims(runs, TOLERANCES))
    assert set(frame.setting) == {"tau0.1-b256-T3000"}
    difference = lambda at: at.test_accuracy_minority - at.test_accuracy_majority  # noqa: E731
    for model in ("supcon", "ce", "ce_fixed"):
        rows, at = rows_of(frame, "R", model), runs[runs.model == model]
        per_ratio = rows[rows.measure.str.startswith("imbalance ratio = ")]
        assert per_ratio.measure.tolist() == [
            f"imbalance ratio = {r:g}: minority - majority test accuracy (class means)"
            for r in ratios]
        for r, row in zip(ratios, per_ratio.itertuples(), strict=True):
            assert row.value == pytest.approx(difference(at[at.imbalance_ratio == r]).mean())
        assert per_ratio.criterion.tolist() == [claims.NO_CRITERION, "< 0", "< 0"]
        assert per_ratio.verdict.tolist() == [claims.NO_VERDICT, "replicates", "replicates"]
        trend = rows[rows.measure == "Spearman rho(imbalance ratio, minority - majority "
                                     "test accuracy (class means))"].iloc[0]
        assert trend.value == pytest.approx(naive_spearman(at, "imbalance_ratio", difference))
        assert (trend.criterion, trend.verdict) == ("< 0", "replicates")
    nc2 = rows_of(frame, "R", "supcon").iloc[0]
    assert nc2.measure == "Spearman rho(imbalance ratio, NC2 mean |cos + 1/(K-1)|)"
    assert nc2.value == pytest.approx(naive_spearman(runs[runs.model == "supcon"],
                                                     "imbalance_ratio", claims.NC2))
    assert (nc2.criterion, nc2.verdict) == ("> 0", "replicates") and nc2.ci_low > 0
    head = rows_of(frame, "R", "ce").iloc[0]
    assert head.measure == "Spearman rho(imbalance ratio, minority head-row cosine)"
    assert head.value == pytest.approx(naive_spearman(runs[runs.model == "ce"],
                                                      "imbalance_ratio", "head_cosine_minority"))
    assert (head.criterion, head.verdict) == ("> 0", "replicates")
    # ce_fixed's head is the fixed simplex: no head row; CE models get no NC2 row
    assert not rows_of(frame, "R", "ce_fixed").measure.str.contains("head-row").any()
    assert not frame[frame.model != "supcon"].measure.str.contains("NC2").any()


def test_the_default_setting_adds_no_rows_and_keeps_its_outputs(table, tmp_path, monkeypatch):
    frame, out = table
    assert set(frame.claim) == {"i", "ii", "iii", "iv"} and len(frame) == 18
    for name in ("temperature_claims", "batch_size_claims", "imbalance_claims"):
        monkeypatch.setattr(claims, name, lambda *args: [])
    _, without = tabulate(tmp_path / "without", runs_table())
    for key, path in out.items():
        assert path.read_bytes() == without[key].read_bytes(), key


def test_an_axis_is_swept_only_within_one_model_and_fixed_setting():
    # tau differs between the models, and b between the two taus: no group sweeps anything
    runs = pd.concat([
        sweep_runs({"batch_size": (64,)}, lambda *a: {}, models=("supcon",)),
        sweep_runs({"temperature": (0.5,), "batch_size": (128,)}, lambda *a: {},
                   models=("supcon_mv",)),
        sweep_runs({"imbalance_ratio": (10.0,)}, lambda *a: {}, models=("ce",)),
    ])
    assert claims.temperature_claims(runs, TOLERANCES) == []
    assert claims.batch_size_claims(runs, TOLERANCES) == []
    assert claims.imbalance_claims(runs, TOLERANCES) == []


def test_a_two_axis_grid_judges_each_axis_per_fixed_setting_and_keeps_markdown_rows(tmp_path):
    def metrics(model, setting, seed, p):
        return {"nc2_simplex_angle_deviation": 0.02 / setting["temperature"] + 0.001 * seed}

    runs = sweep_runs({"temperature": (0.1, 0.5), "batch_size": (64, 256)}, metrics,
                      models=("supcon", "ce"))
    frame, out = tabulate(tmp_path, runs)
    assert set(rows_of(frame, "T").setting) == {"rho1-b64-T3000", "rho1-b256-T3000"}
    assert set(rows_of(frame, "B").setting) == {"rho1-tau0.1-T3000", "rho1-tau0.5-T3000"}
    assert rows_of(frame, "R").empty
    for setting in ("rho1-b64-T3000", "rho1-b256-T3000"):
        rows = frame[(frame.claim == "T") & (frame.setting == setting)]
        assert rows.verdict.tolist() == ["does not", "replicates", "replicates"]  # 0.2, 0.04
    lines = out["markdown_table"].read_text().splitlines()
    assert len(lines) == len(frame) + 2  # header, rule, one line per row
    for line in lines[2:]:  # 9 cells: a measure's |cos| is escaped
        assert len(line.replace("\\|", "").split("|")) == 11, line
    assert ("| T | digits, none, rho1-b64-T3000 | supcon | tau = 0.1: class means"
            in "\n".join(lines))
    verdicts = json.loads(out["verdicts"].read_text())
    verdicts.pop("numerics", None)  # write_json's record of the numerics, not a row
    assert len(verdicts) == len(frame)  # every row keyed apart
    # several settings: the augmentation and the setting join the dataset in the name
    assert verdicts["B/digits/none/rho1-tau0.1-T3000/supcon/rho_b_gap"] == claims.NO_VERDICT
    assert verdicts["T/digits/none/rho1-b64-T3000/supcon/tau0.1_nc2"] == "does not"
    assert pd.read_csv(out["table"]).shape == (len(frame), len(claims.COLUMNS))


# ----------------------------------------------------------------- regimes (issue 22)

def test_rows_say_which_regime_their_runs_reached(table):
    frame, _ = table
    row = verdict_of(frame, "ii", "supcon", "class means")
    assert row.regime.startswith("not reached: training length not swept")
    assert verdict_of(frame, "iii", "ce", "Spearman").regime == (  # p = 0 and 0.5, 3 seeds
        "reached: fit held for 0.67 of T = 3000 (least of 6 runs; needs >= 0.5)")
    growth = verdict_of(frame, "iv", "ce", "growth").regime
    assert growth.startswith("reached: 0 of 3 runs censored")
    # grain 50 against the smallest mean fit time, 2010 (p = 0.5, seeds 0-2)
    assert f"evaluation grain 50 = {50 / 2010:.2f} of the smallest mean fit time 2010" in growth
    # ranks of p tie in threes (2, 2, 2, 5, 5, 5), fit times rank 1-6: rho = 2.25 / (1.5 *
    # sqrt(35 / 12)) = 0.878
    assert "ce control rho(p, fit time) 0.88" in growth
    assert (frame.loc[frame.claim == "i", "regime"] == claims.NO_REGIME).all()


def test_a_run_that_never_reaches_the_terminal_phase_is_not_reached(tmp_path):
    runs = runs_table()
    unheld = (runs.model == "ce") & (runs.seed == 1)
    runs.loc[unheld, "iterations_held_fit"] = 0  # lost its fit at the end (or never fit)
    frame, _ = tabulate(tmp_path, runs)
    reason = "fit held for 0.00 of T = 3000 (least of 3 runs; needs >= 0.5)"
    assert verdict_of(frame, "ii", "ce", "class means").verdict.startswith(
        f"not reached: {reason}")
    assert verdict_of(frame, "iii", "ce", "Spearman").regime == (
        "not reached: fit held for 0.00 of T = 3000 (least of 6 runs; needs >= 0.5)")
    # a verdict that replicates stands: the effect shows before the regime
    assert verdict_of(frame, "ii", "ce", "NC4").verdict == "replicates"
    assert verdict_of(frame, "ii", "supcon", "class means").verdict == "replicates"


def two_lengths(ce_deviation_at) -> pd.DataFrame:
    """runs_table() at T = 1000 and T = 3000, ce's NC2 deviation ``ce_deviation_at(T)``."""
    frames = []
    for length in (1000, 3000):
        runs = runs_table()
        runs["iterations"] = runs["final_iteration"] = length
        runs["iterations_held_fit"] = length * 2 // 3
        ce = runs.model == "ce"
        runs.loc[ce, "nc2_simplex_angle_deviation"] = ce_deviation_at(length) + 0.001 * runs.seed
        frames.append(runs)
    return pd.concat(frames, ignore_index=True)


def test_a_flat_measure_over_training_lengths_does_not_replicate(tmp_path):
    frame, _ = tabulate(tmp_path, two_lengths(lambda length: 0.3))
    row = verdict_of(frame, "ii", "ce", "class means")
    assert row.regime.startswith("reached: fit held for 0.67 of T = 1000")
    assert "flat in T: Spearman rho(T, measure) 0.00" in row.regime
    assert row.value == pytest.approx(0.301)  # at the longest T only
    assert row.verdict == "does not"


def test_a_measure_still_falling_with_training_length_is_not_reached(tmp_path):
    frame, _ = tabulate(tmp_path, two_lengths(lambda length: 0.3 if length == 3000 else 0.6))
    row = verdict_of(frame, "ii", "ce", "class means")
    assert row.value == pytest.approx(0.301)
    assert row.verdict.startswith("not reached: still improving with T: Spearman rho(T, "
                                  "measure) -0.88")
    assert "over T = 1000 to 3000" in row.verdict


def test_growth_is_not_reached_when_the_control_is_flat_or_the_grain_coarse(tmp_path):
    runs = runs_table()
    runs["iterations_to_fit"] = 400.0 + 10 * runs.seed  # no growth with p: no control
    runs["evaluation_interval"] = 100
    growth = {"digits": {"none": {"rho1-tau0.1-b256-T3000": {
        "supcon": {"exponent": 0.8, "exponent_ci95": [0.5, 1.1], "runs_used": 3,
                   "runs_not_fit": 1},
        "ce": {"exponent": 0.1, "exponent_ci95": [0.0, 0.2], "runs_used": 3,
               "runs_not_fit": 0},
    }}}}
    frame, _ = tabulate(tmp_path, runs, growth)
    supcon = verdict_of(frame, "iv", "supcon", "growth").verdict
    assert supcon.startswith("not reached: 1 of 3 runs censored (allowed share 0)")
    assert "evaluation grain 100 = 0.24 of the smallest mean fit time 410 (needs < 0.05)" in supcon
    assert "ce control rho(p, fit time) 0.00" in supcon
    ce = verdict_of(frame, "iv", "ce", "growth")
    assert ce.verdict.startswith("not reached: evaluation grain 100")  # not "does not"
    assert "0 of 3 runs censored" not in ce.verdict  # only what was not reached
    # ... while the regime column keeps what was, after what was not
    failed, met = ce.regime.split("; reached: ")
    assert failed.startswith("not reached: evaluation grain 100") and "ce control" in failed
    assert met == "0 of 3 runs censored (allowed share 0)"


def test_a_regime_of_several_parts_keeps_every_measurement():
    a, b, c = (claims.Regime(True, "a held"), claims.Regime(False, "b short"),
               claims.Regime(True, "c flat"))
    assert (a & c).shown == "reached: a held; c flat" and (a & c).also == ()
    both = a & b & c  # the order of the parts is kept, failed first in the cell
    assert (both.reached, both.text, both.also) == (False, "b short", ("a held", "c flat"))
    assert both.shown == "not reached: b short; reached: a held; c flat"
    assert (b & claims.Regime(False, "d censored")).shown == "not reached: b short; d censored"
    assert claims.Regime(False, "e alone").shown == "not reached: e alone"


def test_growth_control_needs_a_ce_model_in_the_group(tmp_path):
    runs = runs_table()
    runs = runs[runs.model == "supcon"]
    growth = {"digits": {"none": {"rho1-tau0.1-b256-T3000": {"supcon": GROWTH["digits"]["none"][
        "rho1-tau0.1-b256-T3000"]["supcon"] | {"runs_not_fit": 0, "exponent_ci95": [0.5, 0.9]}}}}}
    frame, _ = tabulate(tmp_path, runs, growth)
    assert verdict_of(frame, "iv", "supcon", "growth").verdict == (
        "not reached: no ce runs in the group to show the control")


def test_a_length_study_pools_its_lengths_for_ii_and_adds_no_growth_rows(tmp_path):
    """A grid whose T = 9000 runs hold noise 0 only (presets/claims_cpu.yaml's length set):
    (ii) judges one group per model over both lengths, named by the longest T's setting, its
    value that of T = 9000 alone; (iii) and (iv) get no row for the noise-free T = 9000 group."""
    short = runs_table()
    long = runs_table(noise=(0.0,))
    long["iterations"] = long["final_iteration"] = 9000
    long["iterations_held_fit"] = 6000
    long.loc[long.model == "ce", "nc2_simplex_angle_deviation"] = 0.2 + 0.001 * long.seed
    growth = {"digits": {"none": {**GROWTH["digits"]["none"], "rho1-tau0.1-b256-T9000": {
        m: {"exponent": None, "exponent_ci95": None, "runs_used": 0, "runs_not_fit": 0}
        for m in ("supcon", "ce")}}}}
    frame, _ = tabulate(tmp_path, pd.concat([short, long], ignore_index=True), growth)
    row = verdict_of(frame, "ii", "ce", "class means")
    assert row.setting == "rho1-tau0.1-b256-T9000"
    assert row.value == pytest.approx(0.201)  # seeds 0.200, 0.201, 0.202 at T = 9000 only
    assert "over T = 3000 to 9000" in row.regime
    assert row.regime.startswith("not reached: still improving with T")  # 0.3 -> 0.2
    assert set(frame[frame.claim == "iv"].setting) == {"rho1-tau0.1-b256-T3000"}
    # nor (iii): three seeds at one noise fraction do not relate gap and accuracy across runs
    assert set(frame[frame.claim == "iii"].setting) == {"rho1-tau0.1-b256-T3000"}
