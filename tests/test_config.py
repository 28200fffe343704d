"""params.yaml validation: every bad value stops with an error naming the key and value."""

import copy
import subprocess
import sys

import pytest
import yaml
from conftest import with_value

from pipeline.infra.config import ParamsError, load_params, select, validate_params


def write(tmp_path, params):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_default_params_are_valid(params):
    assert validate_params(params) is params


@pytest.mark.parametrize(
    "dotted,value,expected",
    [
        ("grid.noise_fractions", [0.0, 1.5], r"grid\.noise_fractions\.1: 1\.5 is greater than"),
        ("grid.noise_fractions", [-0.1], r"grid\.noise_fractions\.0: -0\.1 is less than"),
        ("grid.models", ["supcon", "mse"], r"grid\.models\.1: 'mse' is not one of"),
        ("grid.seeds", [-1], r"grid\.seeds\.0: -1 is less than"),
        ("grid.datasets", ["mnist"], r"grid\.datasets: unknown dataset 'mnist'"),
        ("grid.datasets", ["../etc"], r"grid\.datasets\.0: '\.\./etc' does not match"),
        ("grid.batch_sizes", [1], r"grid\.batch_sizes\.0: 1 is less than the min"),
        ("grid.temperatures", [0], r"grid\.temperatures\.0: 0 is less than or equal"),
        ("grid.imbalance_ratios", [0.5], r"grid\.imbalance_ratios\.0: 0\.5 is less than the min"),
        ("grid.iterations", [0], r"grid\.iterations\.0: 0 is less than the minimum"),
        ("grid.iterations", [3000, 3000], r"grid\.iterations: \[3000, 3000\] has non-unique"),
        ("train.common.schedule", "step", r"train\.common\.schedule: 'step' is not one of"),
        ("train.common.representation_dim", 8, r"representation_dim: 8 is too small for ce_fixed"),
        ("noisy_labels.scheme", "pair", r"noisy_labels\.scheme: 'pair' is not one of"),
        ("figures.geometry_noise", 0.7, r"figures\.geometry_noise: 0\.7 is not one of"),
    ],
)
def test_bad_value_names_key_and_value(params, dotted, value, expected):
    with pytest.raises(ParamsError, match=expected):
        validate_params(with_value(params, dotted, value))


def test_misspelt_key_is_named(params):
    p = copy.deepcopy(params)
    p["train"]["common"]["learning_rat"] = 0.1
    with pytest.raises(ParamsError, match=r"unknown key 'train\.common\.learning_rat'"):
        validate_params(p, "my.yaml")


def test_missing_model_section_is_named(params):
    p = copy.deepcopy(params)
    del p["train"]["models"]["ce"]
    with pytest.raises(ParamsError, match=r"train\.models\.ce is missing"):
        validate_params(p)


def test_load_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("grid: [unclosed")
    with pytest.raises(ParamsError, match="broken.yaml: not valid YAML"):
        load_params(path)
    with pytest.raises(ParamsError, match="nope.yaml: cannot read"):
        load_params(tmp_path / "nope.yaml")


def test_select_returns_exactly_the_declared_keys(params):
    got = select(params, ["train.common", "train.models.ce", "datasets.digits"])
    assert set(got) == {"train", "datasets"}
    assert set(got["train"]) == {"common", "models"}
    assert set(got["train"]["models"]) == {"ce"}
    got["train"]["common"]["eval_every"] = -1  # a copy: the caller's params are untouched
    assert params["train"]["common"]["eval_every"] > 0


def test_cli_rejects_bad_params_without_writing(tmp_path, params):
    path = write(tmp_path, with_value(params, "grid.noise_fractions", [0.0, 1.5]))
    out = tmp_path / "labels.parquet"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "noisy_labels", "--params", str(path),
         "--dataset", "digits", "--imbalance-ratio", "1", "--noise-fraction", "0.0", "--seed", "0",
         "--labels", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 1
    assert "grid.noise_fractions.1: 1.5 is greater than the maximum of 1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("dotted,value,expected", [
    ("datasets.digits.imbalance.profile", "zipf",
     r"datasets\.digits\.imbalance\.profile: 'zipf' is not one of \['step', 'long_tail'\]"),
    ("datasets.digits.imbalance.seed", -1, r"datasets\.digits\.imbalance\.seed: -1 is less than"),
    ("grid.imbalance_ratios", [1, 1], r"grid\.imbalance_ratios: \[1, 1\] has non-unique"),
])
def test_bad_imbalance_setting_names_key_and_value(params, dotted, value, expected):
    with pytest.raises(ParamsError, match=expected):
        validate_params(with_value(params, dotted, value))


def test_an_imbalance_ratio_without_the_dataset_profile_is_named(params):
    p = with_value(params, "grid.imbalance_ratios", [1, 10])
    del p["datasets"]["digits"]["imbalance"]
    with pytest.raises(ParamsError, match=r"grid\.imbalance_ratios lists \[10\] for dataset "
                                          r"'digits', but datasets\.digits\.imbalance"):
        validate_params(p)
    del p["grid"]["imbalance_ratios"][1]  # ratio 1 alone: the split as it is, no profile needed
    validate_params(p)
