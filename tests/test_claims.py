"""Stage claims: every verdict follows from the measured interval and the params' criterion."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from conftest import ROOT

from pipeline.infra.io import write_json, write_parquet
from pipeline.stages import claims

TOLERANCES = yaml.safe_load((ROOT / "params.yaml").read_text())["claims"]


def runs_table(noise=(0.0, 0.5), seeds=(0, 1, 2)) -> pd.DataFrame:
    rows = []
    for model, deviation, collapse in (("supcon", 0.01, 0.999), ("ce", 0.3, 0.9)):
        for p in noise:
            for seed in seeds:
                rows.append({
                    "dataset": "digits", "model": model, "augmentation": "none",
                    "noise_fraction": p, "seed": seed,
                    "nc2_simplex_angle_deviation": deviation + 0.001 * seed,
                    "sample_cosine_mean": collapse, "nc1": 0.01,
                    "nc3_self_duality": np.nan if model == "supcon" else 0.1,
                    "nc4_head_ncm_agreement": np.nan if model == "supcon" else 1.0,
                    # the gap grows with p and accuracy falls: a negative rank correlation
                    "final_loss_gap": 0.01 + p + 0.001 * seed,
                    "test_accuracy_class_mean": 0.95 - p - 0.001 * seed,
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


@pytest.fixture
def table(tmp_path):
    write_parquet(pa.Table.from_pandas(runs_table(), preserve_index=False),
                  tmp_path / "runs.parquet")
    growth = {"digits": {"none": {
        "supcon": {"exponent": 1.6, "exponent_ci95": [1.2, 2.0], "runs_used": 3,
                   "runs_not_fit": 1},
        "ce": {"exponent": 0.9, "exponent_ci95": [0.7, 1.1], "runs_used": 3, "runs_not_fit": 0},
    }}}
    write_json(growth, tmp_path / "growth.json")
    write_parquet(free_table(), tmp_path / "free.parquet")
    out = {"table": tmp_path / "claims.csv", "markdown_table": tmp_path / "claims.md",
           "verdicts": tmp_path / "verdicts.json"}
    frame = claims.tabulate_claims({"claims": TOLERANCES}, runs=tmp_path / "runs.parquet",
                                   growth=tmp_path / "growth.json",
                                   free_features=tmp_path / "free.parquet", **out)
    return frame, out


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
    assert verdict_of(frame, "ii", "ce", "class means").verdict == "does not"
    assert verdict_of(frame, "ii", "ce", "sample-to").verdict == "does not"
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


def test_outputs_markdown_and_metrics(table):
    frame, out = table
    text = out["markdown_table"].read_text()
    assert text.count("\n") == len(frame) + 2  # header, rule, one line per row
    assert r"max \|relative gap\|" in text  # pipes escaped: the row keeps its 8 cells
    verdicts = json.loads(out["verdicts"].read_text())
    assert verdicts["iv/digits/none/supcon/growth exponent a (1 of 3 runs never fit)"] == {
        "verdict": "replicates", "value": 1.6}
    assert pd.read_csv(out["table"]).shape == (len(frame), len(claims.COLUMNS))
