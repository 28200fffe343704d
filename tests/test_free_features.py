"""Stage free_features: batched losses, convergence to the closed forms, the stage's files."""

import copy
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import default_params, naive_supcon
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.infra.config import ParamsError, validate_params
from pipeline.maths import theory
from pipeline.maths.free_features import (
    Run,
    batch_losses,
    multiset_experiment,
    multisets,
    optimise,
)
from pipeline.maths.losses import supcon_loss
from pipeline.stages.free_features import (
    TABLE_SCHEMA,
    adam_settings,
    check_section,
    free_features,
    grid_runs,
    multiset_settings,
)

DEFAULTS = default_params()["free_features"]


def section(**changes) -> dict:
    out = copy.deepcopy(DEFAULTS)
    out.update(changes)
    return out


def tiny_section() -> dict:
    """Seconds of CPU: every loss and both batch modes on K = 3, a 126-multiset Figure 5."""
    return section(
        num_classes=[3],
        dims=["K-1"],
        samples_per_class=3,
        batch_sizes=["full", 8],
        temperatures=[0.5],
        iterations=60,
        log_every=20,
        eval_batches=8,
        snapshots=[0, 60],
        multiset={
            "samples_per_class": 2,
            "batch_size": 4,
            "temperature": 0.5,
            "iterations": 8,
            "single_batch_iterations": 20,
            "single_batch_starts": 2,
            "snapshots": [0, 8],
        },
        dpi=30,
    )


# ----------------------------------------------------------------------------- params


def test_default_params_satisfy_their_schema():
    check_section(DEFAULTS)
    assert len(grid_runs(DEFAULTS)) == 48


@pytest.mark.parametrize(
    "changes",
    [
        {"iteration": 10},  # misspelt key
        {"batch_sizes": ["half"]},
        {"batch_sizes": [1]},
        {"dims": ["K+1"]},
        {"losses": ["triplet"]},
        {"temperatures": [0.0]},
        {"multiset": {**DEFAULTS["multiset"], "batch_size": 1}},
    ],
)
def test_schema_rejects_bad_sections(changes):
    params = {**default_params(), "free_features": section(**changes)}
    with pytest.raises(ParamsError, match="free_features"):
        validate_params(params)


def test_snapshots_must_lie_within_the_run():
    with pytest.raises(ValueError, match=r"free_features.snapshots: \[2000\] lie beyond"):
        check_section(section(snapshots=[0, 2000]))


def test_multiset_experiment_size_is_capped():
    big = {**DEFAULTS["multiset"], "batch_size": 14}
    with pytest.raises(ValueError, match="give 319,770 multisets, more than 200,000"):
        check_section(section(multiset=big))


# ----------------------------------------------------------------------------- batch losses


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 8),
    b=st.integers(1, 9),
    k=st.integers(1, 4),
    tau=st.floats(0.05, 3.0),
    seed=st.integers(0, 2**31),
)
def test_batch_losses_equal_supcon_loss_and_the_naive_loop(n, b, k, tau, seed):
    # Index batches drawn with replacement: repeated samples and singleton classes abound.
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    y = rng.integers(0, k, size=n)
    batches = rng.integers(0, n, size=(5, b))
    got = batch_losses(torch.tensor(z), torch.tensor(y), torch.tensor(batches), tau).numpy()
    for row, value in zip(batches, got, strict=True):
        one = supcon_loss(torch.tensor(z[row]), torch.tensor(y[row]), tau).item()
        assert value == pytest.approx(one, rel=1e-10, abs=1e-12)
        assert value == pytest.approx(naive_supcon(z[row], y[row], tau), rel=1e-10, abs=1e-12)


def test_multisets_are_all_distinct_multisets():
    rows = multisets(5, 3)
    assert rows.shape == (math.comb(5 + 3 - 1, 3), 3)
    assert len({tuple(r) for r in rows}) == len(rows)
    assert (np.diff(rows, axis=1) >= 0).all()
    assert len(multisets(9, 9)) == 24310


# ----------------------------------------------------------------------------- convergence


@pytest.mark.parametrize(
    "run",
    [
        Run("supcon", 3, 2, 8, None, 0.5),
        Run("supcon", 10, 9, 8, None, 0.5),
        Run("supcon", 4, 8, 5, None, 1.0),
        Run("ce_fixed", 10, 20, 8, None, None),
        Run("ce_fixed", 3, 2, 8, 8, None),  # mini-batch: every batch has the same optimum
        Run("ce", 3, 6, 8, None, None),
        Run("ce", 10, 9, 8, None, None),
    ],
    ids=lambda r: r.label,
)
def test_free_features_reach_the_closed_form_and_the_simplex(run):
    rows, _ = optimise(run, **adam_settings(section(iterations=1000, log_every=1000)), seed=1)
    first, final = rows[0], rows[-1]
    assert first["relative_gap"] > 1e-2  # the start is far from the optimum
    assert abs(final["relative_gap"]) <= 1e-4
    assert final["class_mean_cosine_deviation"] <= 1e-3
    assert final["sample_to_class_mean_cosine_min"] >= 1 - 1e-3  # classes collapsed
    # A lower bound in these cases: no record goes below it (up to rounding).
    assert min(r["relative_gap"] for r in rows) >= -1e-12


def test_mini_batch_supcon_approaches_the_expected_optimum():
    run = Run("supcon", 3, 2, 8, 32, 0.5)
    settings = adam_settings(section(iterations=1500, log_every=500, eval_batches=256))
    rows, _ = optimise(run, **settings, seed=0)
    final = rows[-1]
    assert final["optimum"] == theory.expected_supcon_optimum([1 / 3] * 3, 32, 0.5, 1.0)
    assert final["eval_optimum"] == pytest.approx(final["optimum"], rel=2e-2)  # 256 batches
    assert abs(final["relative_gap"]) <= 1e-4
    assert final["class_mean_cosine_deviation"] <= 1e-2  # noise-limited: slower than full


def test_small_temperature_reaches_the_loss_long_before_the_angles():
    # tau = 0.1: the loss barely depends on the angles between collapsed classes (terms of
    # order exp(-rho^2 K / (tau (K-1))) = 3e-7), so the gap closes while the angles lag.
    run = Run("supcon", 3, 2, 8, None, 0.1)
    rows, _ = optimise(run, **adam_settings(section(iterations=600)), seed=0)
    final = rows[-1]
    assert abs(final["relative_gap"]) < 1e-2
    assert final["class_mean_cosine_deviation"] > 1e-2


def test_multiset_total_meets_the_closed_form_single_batches_go_below():
    # 3,003 multisets of b = 6 from 9 samples (the default, b = 9, has 24,310: 5 s).
    cfg = {**DEFAULTS["multiset"], "batch_size": 6}
    result = multiset_experiment(**multiset_settings(section(multiset=cfg)), seed=0)
    assert abs(result.rows[-1]["gap"]) < 1e-12
    assert result.rows[0]["gap"] > 0.1
    closed, single = result.closed_form, result.single_batch_minimum
    assert (single <= closed + 1e-9).all()
    below = {
        c for c, s, t in zip(result.configurations, single, closed, strict=True) if s < t - 1e-4
    }
    assert (3, 3, 0) in below and (4, 1, 1) in below  # unequal class counts
    balanced = result.configurations.index((2, 2, 2))
    assert single[balanced] == pytest.approx(closed[balanced], rel=1e-8)
    # At the optimum of the total every single batch sits on its own closed form.
    last = result.snapshots[max(result.snapshots)]
    # (to first order in the residual displacement, ~1e-8: single batches are not stationary)
    np.testing.assert_allclose(last, closed[result.group], rtol=1e-6)


# ----------------------------------------------------------------------------- the stage


def test_stage_writes_table_and_figures_byte_identically(tmp_path):
    params = {"free_features": tiny_section()}
    first = free_features(params, table=tmp_path / "a.parquet", figures=tmp_path / "fig_a")
    free_features(params, table=tmp_path / "b.parquet", figures=tmp_path / "fig_b")
    assert first.schema.equals(TABLE_SCHEMA)
    assert pq.read_schema(tmp_path / "a.parquet").remove_metadata().equals(TABLE_SCHEMA)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    names = sorted(p.name for p in (tmp_path / "fig_a").iterdir())
    assert names == sorted(
        f"{stem}.{fmt}"
        for stem in ("convergence_supcon", "convergence_ce", "circle_k3", "multiset_batches_k3")
        for fmt in ("png", "pdf")
    )
    for name in names:
        assert (tmp_path / "fig_a" / name).read_bytes() == (tmp_path / "fig_b" / name).read_bytes()
    table = first.to_pandas()
    # 4 grid runs of supcon/ce_fixed/ce x {full, b=8}: 6 runs x 4 records, + 9 multiset rows.
    assert (table["experiment"] == "grid").sum() == 6 * 4
    assert (table["experiment"] == "multiset").sum() == 9
    assert table["gap"].notna().all()
    np.testing.assert_allclose(table["gap"], table["eval_loss"] - table["eval_optimum"])


@pytest.mark.e2e
def test_stage_calls_no_blas(tmp_path):
    """MKL's float64 BLAS gives other bytes on other CPU vendors (pipeline/maths/products.py):
    the stage, run as its own process under ``MKL_VERBOSE=1``, makes no MKL call. The same
    process then multiplies two float64 matrices with ``torch.mm``: that call is seen, so
    the check can see one."""
    import json
    import os
    import re
    import subprocess
    import sys

    from conftest import ROOT

    script = (
        "import json, sys, pipeline, torch\n"
        "from pipeline.stages.free_features import free_features\n"
        "params = json.loads(sys.argv[1])\n"
        f"free_features(params, table={str(tmp_path / 't.parquet')!r}, "
        f"figures={str(tmp_path / 'figures')!r})\n"
        "print('STAGE DONE', flush=True)\n"
        "torch.mm(torch.ones(3, 3, dtype=torch.float64), torch.ones(3, 3, dtype=torch.float64))\n"
    )
    env = {**os.environ, "MKL_VERBOSE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps({"free_features": tiny_section()})],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    ).stdout
    stage, control = out.split("STAGE DONE")
    call = re.compile(r"^MKL_VERBOSE\s+[A-Z][A-Z0-9_]*\(", re.MULTILINE)
    assert call.findall(stage) == []
    assert [c.strip() for c in call.findall(control)] == ["MKL_VERBOSE DGEMM("]
