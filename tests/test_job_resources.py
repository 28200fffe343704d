"""Cluster requests per stage (pipeline/infra/job_resources.py), as the rules declare them."""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT, default_params, tiny_params

from pipeline.infra.job_resources import job_resources, training_minutes
from pipeline.infra.stage_table import STAGES


def paper_params() -> dict:
    return yaml.safe_load((ROOT / "presets/paper.yaml").read_text())


def test_every_stage_has_resources_and_only_gpu_stages_ask_for_a_gpu():
    for stage in STAGES:
        resources = job_resources(stage.name, default_params())
        assert {"cpus_per_task", "mem_mb", "runtime"} <= set(resources), stage.name
        assert resources.get("gpu", 0) == (1 if stage.name in ("train", "embed") else 0)


def test_training_time_follows_iterations_batch_and_encoder():
    paper, digits = paper_params(), default_params()
    # 100,000 ResNet-18 steps at 0.03 s, 200 evaluations of 60,000 images, x2, + start-up
    # and torch.compile: 2 * (3000 + 200 * 60000/256/3 * 0.03) / 60 = 115.6 -> 116 + 3 + 5
    assert job_resources("train", paper)["runtime"] == 124
    assert job_resources("train", digits)["runtime"] == 4  # 3,000 mlp steps: seconds
    common = dict(digits["train"]["common"])
    assert training_minutes(common, 2 * 300_000, ["digits"]) > training_minutes(
        common, 300_000, ["digits"])
    assert training_minutes(common, 300_000, ["digits"], batch_size=4 * 256) > training_minutes(
        common, 300_000, ["digits"])
    # one request for every training job: sized for the grid's longest T
    longest = {**digits, "grid": {**digits["grid"], "iterations": [3000, 300_000]}}
    assert job_resources("train", longest)["runtime"] > job_resources("train", digits)["runtime"]
    # one request for every training job: sized for the grid's largest batch
    batches = {**digits, "grid": {**digits["grid"], "batch_sizes": [32, 256, 8192]}}
    assert job_resources("train", batches)["runtime"] > job_resources("train", digits)["runtime"]
    assert job_resources("train", paper)["mem_mb"] > job_resources("train", digits)["mem_mb"]


def test_an_encoder_without_sizing_is_an_error_naming_it():
    params = tiny_params()
    params["train"]["common"]["encoder"] = "vit"
    with pytest.raises(KeyError, match="train.common.encoder: no resources defined for 'vit'"):
        job_resources("train", params)
