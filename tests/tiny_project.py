"""One tiny project run, shared by the lineage, report, remote and grid-change tests.

The real Snakefile runs once per test session on a copy of the project with tiny params
(conftest.tiny_params: 3 models x 2 noise fractions x 1 seed), starting from an empty
dvc.lock; the result is committed to the copy's own git repository. Tests that only read
use it as is; tests that change anything work on a copy (:func:`copy_of`), so each starts
from the same clean state.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import yaml
from conftest import copy_project, sh, tiny_params
from filelock import FileLock

_BUILT: dict[str, Path] = {}


def git_commit(root: Path, message: str) -> str:
    sh("git", "add", "-A", cwd=root)
    sh("git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-q",
       "-m", message, cwd=root)
    return sh("git", "rev-parse", "HEAD", cwd=root).stdout.strip()


def _build(root: Path) -> None:
    copy_project(root)
    (root / "dvc.lock").unlink(missing_ok=True)  # record only this project's runs
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    sh(sys.executable, "-m", "snakemake", "--cores", "2", cwd=root)
    git_commit(root, "tiny project after its first run")


def built(tmp_path_factory) -> Path:
    """The session's tiny project after one full Snakemake run, committed (read only).

    Under pytest-xdist the run happens once for all workers: the first to ask builds it in
    the session's shared temporary folder, holding a file lock, and the others wait for it;
    each worker then reads its own copy, because DVC and Snakemake take repository locks
    even to read, and two workers must never contend for them.
    """
    if "root" not in _BUILT:
        worker = os.environ.get("PYTEST_XDIST_WORKER")
        if worker is None:
            root = tmp_path_factory.mktemp("tiny-project")
            _build(root)
        else:
            shared = tmp_path_factory.getbasetemp().parent  # common to the session's workers
            with FileLock(shared / "tiny-project.lock"):
                if not (shared / "tiny-project.done").exists():
                    if (shared / "tiny-project").exists():  # a build that failed part-way
                        shutil.rmtree(shared / "tiny-project")
                    (shared / "tiny-project").mkdir()
                    _build(shared / "tiny-project")
                    (shared / "tiny-project.done").touch()
            root = tmp_path_factory.getbasetemp() / "tiny-project"
            shutil.copytree(shared / "tiny-project", root, symlinks=True)
        _BUILT["root"] = root
    return _BUILT["root"]


def copy_of(tmp_path_factory, dest: Path) -> Path:
    """A private copy of the built project (git history, DVC cache and data included)."""
    shutil.copytree(built(tmp_path_factory), dest, symlinks=True)
    return dest


def head(root: Path) -> str:
    return sh("git", "rev-parse", "HEAD", cwd=root).stdout.strip()
