"""Shared fixtures: the repository root and a tiny, fast params set for end-to-end runs."""

from __future__ import annotations

import copy
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import pipeline  # noqa: F401  first of the project: portable numerics before numpy/torch load

# Fixtures and helpers shared by the train and embed tests (tests/runs.py).
pytest_plugins = ("runs",)

ROOT = Path(__file__).resolve().parents[1]

# Stage subprocesses must find `python -m pipeline` of this interpreter.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
# Every `dvc` command otherwise starts a detached analytics daemon (about 0.5 s of CPU each,
# measured in docs/design.md, "Test times"); tests send nothing anywhere.
os.environ["DVC_NO_ANALYTICS"] = "1"


def _no_slurm_controller() -> str:
    """A slurm.conf whose controller is a closed local port, so Slurm clients fail at once.

    Snakemake builds its command line from every installed executor plugin, and the Slurm
    plugin's help text runs `scontrol show config` whenever `sinfo` is on PATH; with no
    controller to reach (Slurm installed, no cluster running) scontrol waits ~9 s before it
    gives up. Every `snakemake` call of the suite sat idle that long (docs/design.md, "Test
    times"). tests/slurm_cluster.py gives the Slurm tests their own SLURM_CONF.
    """
    import atexit
    import tempfile

    directory = tempfile.mkdtemp(prefix="no-slurm-controller-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    conf = Path(directory) / "slurm.conf"
    # MessageTimeout: without it a refused connection is retried for ~9 s as well.
    conf.write_text("ClusterName=none\nSlurmctldHost=localhost\nSlurmctldPort=9\n"
                    "MessageTimeout=1\n")
    return str(conf)


os.environ["SLURM_CONF"] = _no_slurm_controller()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slurm: runs jobs on a real one-node Slurm cluster (tests/slurm_cluster.py)"
    )


# pytest-xdist (--dist loadscope) hands each module out as one unit of work, in collection
# order: the slowest modules (docs/design.md, "Test times") go first, so that no worker
# starts one of them when the other is nearly done.
SLOWEST_FIRST = ("test_presets_cifar", "test_presets", "test_slurm", "test_audit", "test_sync")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(getattr(item.module, "__name__", ""), len(rank)))


@pytest.fixture(autouse=True)
def one_thread():
    """Tests use small tensors: one thread is faster, results do not depend on the core
    count, and the cores stay free for the subprocesses end-to-end tests start."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def naive_supcon(z, y, tau: float) -> float:
    """docs/paper.md's supcon definition, one anchor and one positive at a time, in float64:
    the reference every vectorised loss is tested against."""
    b = len(y)
    total = 0.0
    for i in range(b):
        positives = [p for p in range(b) if p != i and y[p] == y[i]]
        if not positives:
            continue  # no positive: adds 0, still counts in b
        denominator = sum(math.exp(z[i] @ z[a] / tau) for a in range(b) if a != i)
        log_probs = [math.log(math.exp(z[i] @ z[p] / tau) / denominator) for p in positives]
        total -= sum(log_probs) / len(positives)
    return total / b


def sh(*cmd, cwd, check=True, env=None):
    """Run a command; on failure raise with its whole output."""
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed:\n{result.stdout}\n{result.stderr}")
    return result


def copy_project(dest: Path) -> Path:
    """The project's files (tracked or not ignored; no tests, no data) in a new git repo."""
    files = sh("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    for name in files.stdout.splitlines():
        src = ROOT / name
        if src.is_file() and not name.startswith("tests/"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    sh("git", "init", "-q", cwd=dest)
    return dest


def with_value(params: dict, dotted: str, value) -> dict:
    """A deep copy of ``params`` with the dotted key set to ``value``."""
    p = copy.deepcopy(params)
    *parents, leaf = dotted.split(".")
    node = p
    for part in parents:
        node = node[part]
    node[leaf] = value
    return p


def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def tiny_params() -> dict:
    """The default params cut down to seconds of CPU: 3 models x 2 noise levels x 1 seed."""
    p = copy.deepcopy(default_params())
    p["grid"].pop("run_sets", None)  # one product of the axes below
    p["grid"]["noise_fractions"] = [0.0, 0.3]
    p["grid"]["seeds"] = [0]
    p["grid"]["batch_sizes"] = [64]
    p["grid"]["iterations"] = [60]
    p["train"]["common"].update(hidden_dims=[64], eval_every=20)
    p["free_features"].update(
        num_classes=[3], dims=["K-1"], samples_per_class=3, batch_sizes=["full", 8],
        temperatures=[0.5], iterations=40, log_every=20, eval_batches=4, snapshots=[0, 40],
        dpi=30,
    )
    p["free_features"]["multiset"].update(
        samples_per_class=2, batch_size=4, iterations=4, single_batch_iterations=5,
        single_batch_starts=1, snapshots=[0, 4],
    )
    return p


@pytest.fixture
def params() -> dict:
    return default_params()


@pytest.fixture
def small_params() -> dict:
    return tiny_params()


@pytest.fixture
def multiview_params(small_params) -> dict:
    """``small_params`` plus the multi-view supcon model (two shifted views per image)."""
    small_params["train"]["models"]["supcon_mv"] = {"learning_rate": 0.1,
                                                    "view_augmentation": "shift"}
    return small_params
