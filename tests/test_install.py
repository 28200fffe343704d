"""The Makefile's choice of interpreter: the newest supported Python that runs, PYTHON=...
to override, and a named refusal (nothing created) when there is none."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.fixture
def project(tmp_path):
    """What `make install` reads, in a folder without a venv."""
    for name in ("Makefile", "pyproject.toml", "requirements.lock"):
        shutil.copy2(ROOT / name, tmp_path / name)
    return tmp_path


def make(project, *args):
    # without an inherited PYTHON (.ci/run exports one): the Makefile's own search decides
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "MAKEFLAGS", "MFLAGS")}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=project, env=env,
                          capture_output=True, text=True, check=False)


def test_no_supported_python_is_refused_by_name_and_creates_nothing(project):
    result = make(project, "install", "SUPPORTED_PYTHONS=9.8 9.9")
    assert result.returncode != 0
    assert ("make: no supported Python on PATH: install one of python9.8 python9.9 or set "
            "PYTHON=/path/to/python3.x") in result.stderr
    assert not (project / ".venv").exists()


@pytest.mark.parametrize("version", ["3.10.4", "3.14.0"])
def test_an_unsupported_python_given_is_refused_with_its_version(project, version):
    fake = project / "python-fake"
    fake.write_text(f"#!/bin/sh\necho 'Python {version}'\nexit 1\n")  # fails the range check
    fake.chmod(0o755)
    result = make(project, "install", f"PYTHON={fake}")
    assert result.returncode != 0
    assert (f"make: PYTHON={fake} is not a supported Python (3.11 to 3.13, pyproject.toml): "
            f"Python {version}") in result.stderr
    assert not (project / ".venv").exists()


def test_the_interpreter_found_runs_and_is_supported(project):
    plan = make(project, "-n", "install").stdout
    found = plan.split('test -n "', 1)[1].split('"', 1)[0]
    version = subprocess.run([found, "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert (3, 11) <= tuple(map(int, version)) <= (3, 13)
    given = make(project, "-n", "install", f"PYTHON={sys.executable}").stdout
    assert f"{sys.executable} -m venv .venv" in given  # PYTHON= wins


def test_requires_python_is_what_the_makefile_accepts():
    import tomllib

    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert spec == ">=3.11,<3.14"
    assert "SUPPORTED_PYTHONS := 3.13 3.12 3.11" in (ROOT / "Makefile").read_text()
