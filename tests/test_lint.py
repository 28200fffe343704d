"""Static checks: Snakemake's linter and snakefmt on the workflow, ruff on the Python code."""

import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

BIN = Path(sys.executable).parent

# The one lint we accept: the software of every rule is the pinned venv (pyproject.toml +
# requirements.lock, built by `make install`), not a per-rule conda env or container.
ACCEPTED_LINTS = {"Specify a conda environment or container for each rule."}


def test_snakemake_lint_has_no_unaccepted_findings():
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True
    )
    output = result.stdout + result.stderr
    findings = set(re.findall(r"^\s+\* (.+?):?$", output, re.M))
    assert findings <= ACCEPTED_LINTS, output
    assert "Traceback" not in output and "Error" not in output, output


def test_ruff_is_clean():
    result = subprocess.run(
        [BIN / "ruff", "check", "pipeline", "tests", "benchmarks"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_is_snakefmt_formatted():
    result = subprocess.run(
        [BIN / "snakefmt", "--check", "Snakefile", "rules"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
