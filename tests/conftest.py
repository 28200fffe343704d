"""Shared fixtures: the repository root and a tiny, fast params set for end-to-end runs."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Stage subprocesses must find `python -m pipeline` of this interpreter.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def tiny_params() -> dict:
    """The default params cut down to seconds of CPU: 3 models x 2 noise levels x 1 seed."""
    p = copy.deepcopy(default_params())
    p["grid"]["noise_fractions"] = [0.0, 0.3]
    p["grid"]["seeds"] = [0]
    p["train"]["common"].update(hidden_dims=[64], iterations=60, eval_every=20, batch_size=64)
    return p


@pytest.fixture
def params() -> dict:
    return default_params()


@pytest.fixture
def small_params() -> dict:
    return tiny_params()
