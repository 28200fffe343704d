"""Bad input and faults: a named error, exit status != 0, and nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import copy_project, sh, tiny_params, with_value

from pipeline.infra import io
from pipeline.stages.noisy_labels import make_noisy_labels


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, check=False)


def write_params(tmp_path, params):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def labels_args(params_file, labels, dataset="digits"):
    return ["noisy_labels", "--params", params_file, "--dataset", dataset, "--imbalance-ratio", "1",
            "--noise-fraction", "0.0", "--seed", "0", "--labels", labels]


def train_args(params_file, labels, out, dataset="digits"):
    return ["train", "--params", params_file, "--dataset", dataset, "--imbalance-ratio", "1",
            "--model", "supcon", "--augmentation", "none", "--temperature", "0.1",
            "--batch-size", "64", "--iterations", "60", "--noise-fraction", "0.0", "--seed", "0",
            "--labels", labels,
            "--checkpoint", out / "m.pt", "--train-log", out / "log.parquet"]


def with_flag(args: list, flag: str, value: str) -> list:
    """``args`` with the value after ``flag`` replaced."""
    at = args.index(flag) + 1
    return [*args[:at], value, *args[at + 1:]]


def named_failure(result) -> str:
    """The one line a refused stage ends with: exit status 1 and no traceback."""
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "dotted,value,message",
    [
        ("train.common.bach_size", 64, "unknown key 'train.common.bach_size'"),
        ("grid.noise_fractions", [1.5], "grid.noise_fractions.0: 1.5 is greater than the maximum"),
        ("grid.batch_sizes", [1], "grid.batch_sizes.0: 1 is less than the minimum of 2"),
        ("grid.seeds", [-1], "grid.seeds.0: -1 is less than the minimum of 0"),
        ("grid.temperatures", [0.0], "grid.temperatures.0: 0.0 is less than or equal"),
        ("grid.temperatures", [-0.1], "grid.temperatures.0: -0.1 is less than or equal"),
        ("grid.iterations", [0], "grid.iterations.0: 0 is less than the minimum of 1"),
        ("train.common.representation_dim", 5, "representation_dim: 5 is too small for ce_fixed"),
        ("grid.datasets", ["../../etc"], "grid.datasets.0: '../../etc' does not match"),
    ],
)
def test_bad_params_stop_the_stage_with_a_named_error_and_write_nothing(
    tmp_path, dotted, value, message
):
    params = tiny_params()
    labels = tmp_path / "labels.parquet"
    make_noisy_labels(params, dataset="digits", imbalance_ratio=1, noise_fraction=0.0, seed=0,
                      labels=labels)
    bad = write_params(tmp_path, with_value(params, dotted, value))
    out = tmp_path / "out"
    result = cli(*train_args(bad, labels, out))
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_dataset_name_with_path_separators_is_refused(tmp_path):
    params_file = write_params(tmp_path, tiny_params())
    out = tmp_path / "labels.parquet"
    result = cli(*labels_args(params_file, out, dataset="../digits"))
    assert result.returncode == 1
    assert "missing key 'datasets.../digits'" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("damage", ["truncate", "schema"])
def test_truncated_or_mismatched_upstream_parquet_is_named(tmp_path, damage):
    params = tiny_params()
    params_file = write_params(tmp_path, params)
    labels = tmp_path / "labels.parquet"
    make_noisy_labels(params, dataset="digits", imbalance_ratio=1, noise_fraction=0.0, seed=0,
                      labels=labels)
    if damage == "truncate":
        labels.write_bytes(labels.read_bytes()[:-100])
        expected = "labels.parquet: unreadable or truncated Parquet file"
    else:
        table = pq.read_table(labels).drop_columns(["noisy_label"])
        pq.write_table(table, labels)
        expected = "labels.parquet: missing column 'noisy_label'"
    out = tmp_path / "out"
    result = cli(*train_args(params_file, labels, out))
    assert result.returncode == 1 and expected in result.stderr
    assert not out.exists()


def test_missing_cifar_archive_stops_the_stage(tmp_path):
    params = tiny_params()
    params["grid"]["datasets"] = ["cifar10"]
    params["datasets"] = {"cifar10": {"archive": str(tmp_path / "nope.tar.gz")}}
    params_file = write_params(tmp_path, params)
    out = tmp_path / "labels.parquet"
    result = cli(*labels_args(params_file, out, dataset="cifar10"))
    assert result.returncode == 1
    assert "nope.tar.gz: missing dataset archive for 'cifar10'" in result.stderr
    assert not out.exists()


def test_an_imbalance_ratio_the_dataset_cannot_realise_is_refused_by_name(tmp_path):
    params = tiny_params()
    params["grid"]["imbalance_ratios"] = [1, 1000]
    params_file = write_params(tmp_path, params)
    out = tmp_path / "labels.parquet"
    line = named_failure(cli(*with_flag(labels_args(params_file, out), "--imbalance-ratio",
                                        "1000")))
    # step thins the last five classes of digits' training split to 1/rho of each
    assert "grid.imbalance_ratios: 1000 cannot be realised on dataset 'digits' with profile " \
           "'step'" in line
    assert "the realised ratio would be 128; the largest ratio this profile can give " \
           "'digits' is 122" in line  # its smallest minority class: 122 images
    assert not out.exists() and list(tmp_path.iterdir()) == [params_file]


@pytest.mark.parametrize("field,made,wrong", [
    ("noise_fraction", ["--noise-fraction", "0.2"], "0.2"),
    ("seed", ["--seed", "1"], "1"),
])
def test_labels_of_another_run_are_refused_by_train(tmp_path, field, made, wrong):
    """Same dataset, same samples, same clean labels, the right shape: only the run the
    file was made for differs, and train names it."""
    params_file = write_params(tmp_path, tiny_params())
    labels = tmp_path / "labels.parquet"
    assert cli(*with_flag(labels_args(params_file, labels), *made)).returncode == 0
    out = tmp_path / "run"
    line = named_failure(cli(*train_args(params_file, labels, out)))
    assert f"{labels}: labels made for {field} {wrong}" in line
    assert "but run digits/rho1/supcon/none/tau0.1-b64-T60/noise0.0-seed0 needs" in line
    assert not out.exists() or not any(out.iterdir())


def test_a_batch_that_cannot_fit_is_refused_before_allocation(tmp_path):
    params = tiny_params()
    params["grid"]["batch_sizes"] = [200000]
    params_file = write_params(tmp_path, params)
    labels = tmp_path / "labels.parquet"
    assert cli(*labels_args(params_file, labels)).returncode == 0
    out = tmp_path / "run"
    line = named_failure(cli(*with_flag(train_args(params_file, labels, out), "--batch-size",
                                        "200000")))
    # 200,000 inputs of 8x8 and four 200,000^2 float32 matrices: 596.1 GiB
    assert ("grid.batch_sizes: 200000 cannot fit: one training step of run "
            "digits/rho1/supcon/none/tau0.1-b200000-T60/noise0.0-seed0 needs at least 596.1 GiB"
            in line)
    assert "but cpu has" in line and "GiB available" in line
    assert not out.exists() or not any(out.iterdir())


def test_interrupted_write_leaves_neither_output_nor_temporary(tmp_path, monkeypatch):
    target = tmp_path / "out.json"

    def fail(*_):
        raise KeyboardInterrupt  # e.g. the job is stopped between write and rename

    monkeypatch.setattr(io.os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        io.write_json({"a": 1}, target)
    assert list(tmp_path.iterdir()) == []


def test_a_job_whose_output_is_being_produced_elsewhere_stops(tmp_path):
    params = tiny_params()
    params_file = write_params(tmp_path, params)
    labels = tmp_path / "labels.parquet"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pipeline.infra.io import output_locks;"
         f"cm = output_locks([{str(labels)!r}]); cm.__enter__(); print('held', flush=True);"
         "time.sleep(600)"],
        cwd=tmp_path, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = cli(*labels_args(params_file, labels), cwd=tmp_path)
        assert result.returncode == 1
        assert "another job is producing this output right now" in result.stderr
        assert not labels.exists()
    finally:
        holder.kill()
        holder.wait()
    assert cli(*labels_args(params_file, labels), cwd=tmp_path).returncode == 0


GATED_PYTHON = """#!/bin/sh
# A job's `python`, held at its start until the test opens the gate: the first Snakemake run
# is then mid-job, holding its lock, for as long as the test needs and no longer.
touch "{started}"
while [ ! -e "{gate}" ]; do sleep 0.05; done
exec "{python}" "$@"
"""


@pytest.mark.e2e
def test_two_snakemake_invocations_at_once_fail_cleanly(tmp_path):
    project = copy_project(tmp_path / "project")
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    started, gate, bin_dir = tmp_path / "started", tmp_path / "gate", tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(GATED_PYTHON.format(started=started, gate=gate,
                                                        python=sys.executable))
    (bin_dir / "python").chmod(0o755)
    target = "data/labels/digits/rho1/noise0.0-seed0.parquet"
    env = os.environ | {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    first = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", target],
                             cwd=project, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        # Snakemake refuses a second run in the same directory: first because the running
        # job's outputs are marked incomplete, and, told to ignore that, by its lock.
        second = sh(sys.executable, "-m", "snakemake", "--cores", "1", cwd=project, check=False)
        assert second.returncode != 0
        assert "Incomplete files" in second.stderr or "cannot be locked" in second.stderr
        forced = sh(sys.executable, "-m", "snakemake", "--cores", "1", "--rerun-incomplete",
                    cwd=project, check=False)
        assert forced.returncode != 0
        assert "Directory cannot be locked" in forced.stdout + forced.stderr
        assert first.poll() is None  # refused while the first was still mid-job
        gate.touch()
        assert first.wait(timeout=120) == 0  # the first run was not disturbed
    finally:
        gate.touch()
        if first.poll() is None:
            first.kill()
            first.wait()
    assert "Nothing to be done" in sh(sys.executable, "-m", "snakemake", "-n", "--cores", "1",
                                      target, cwd=project).stdout
