"""A training job killed with SIGKILL at random points resumes and ends byte-identical to an
uninterrupted run; an interrupted job never leaves an output that looks finished."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import tiny_params

from pipeline.stages.noisy_labels import make_noisy_labels
from pipeline.stages.train import resume_path


def command(params_file, labels, out):
    return [sys.executable, "-m", "pipeline", "train", "--params", str(params_file),
            "--dataset", "digits", "--imbalance-ratio", "1", "--model", "supcon",
            "--augmentation", "none", "--temperature", "0.1", "--batch-size", "64",
            "--iterations", "1500",
            "--noise-fraction", "0.3", "--seed", "0",
            "--labels", str(labels), "--checkpoint", str(out / "model.pt"),
            "--train-log", str(out / "log.parquet")]


@pytest.fixture
def setup(tmp_path):
    params = tiny_params()
    params["grid"]["iterations"] = [1500]
    params["train"]["common"].update(eval_every=25)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    labels = tmp_path / "labels.parquet"
    make_noisy_labels(params, dataset="digits", imbalance_ratio=1, noise_fraction=0.3, seed=0,
                      labels=labels)
    env = {**os.environ, "PIPELINE_CHECKPOINT_SECONDS": "0"}  # a resume point every eval
    return params_file, labels, env


@pytest.mark.e2e  # kills and resumes real training processes: not in the fast tier
def test_sigkill_at_random_points_then_resume_is_byte_identical(tmp_path, setup):
    params_file, labels, env = setup
    reference = tmp_path / "reference"
    subprocess.run(command(params_file, labels, reference), env=env, check=True,
                   capture_output=True)

    out = tmp_path / "interrupted"
    resume = resume_path(out / "model.pt")
    rng = random.Random(1234)
    kills = 0
    for _ in range(3):
        before = resume.stat().st_mtime_ns if resume.exists() else None
        job = subprocess.Popen(command(params_file, labels, out), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # wait for fresh progress (a new resume point), then kill somewhere after it
        deadline = time.monotonic() + 60
        while job.poll() is None and time.monotonic() < deadline:
            if resume.exists() and resume.stat().st_mtime_ns != before:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        if job.poll() is None:
            os.kill(job.pid, signal.SIGKILL)
            kills += 1
        job.wait()
        if job.returncode == -signal.SIGKILL:
            # nothing that looks finished: no final checkpoint, no log
            assert not (out / "model.pt").exists() and not (out / "log.parquet").exists()
    assert kills >= 2, "the job finished before it could be killed: make it longer"

    result = subprocess.run(command(params_file, labels, out), env=env, capture_output=True,
                            text=True, check=True)
    assert "resuming after iteration" in result.stderr
    for name in ("model.pt", "log.parquet"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not resume.exists()  # removed once the outputs are complete


def test_resume_point_of_another_config_is_ignored(tmp_path, setup):
    params_file, labels, env = setup
    out = tmp_path / "run"
    job = subprocess.Popen(command(params_file, labels, out), env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resume = resume_path(out / "model.pt")
    while job.poll() is None and not resume.exists():
        time.sleep(0.01)
    job.kill()
    job.wait()
    params = yaml.safe_load(params_file.read_text())
    params["train"]["models"]["supcon"]["learning_rate"] = 0.05
    params_file.write_text(yaml.safe_dump(params))
    result = subprocess.run(command(params_file, labels, out), env=env, capture_output=True,
                            text=True, check=True)
    assert "resume point of another config; starting afresh" in result.stderr
    assert "resuming after" not in result.stderr
