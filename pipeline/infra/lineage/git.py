"""The code version of a stage: which git commits hold exactly the code md5s dvc.lock records.

DVC records each code file's md5, not a commit (a commit would change every artifact's
record with every commit, see pipeline/infra/provenance.py); this maps the md5s back to git
history. DVC has no such query, so it is git's CLI here. Every answer is cached: the runs of
a stage family share one set of code files, so a grid of 100 runs asks git a few times.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

from pipeline.infra.lineage.dvc_state import LOCK_FILE


class Git:
    """git at the project root: HEAD, the dirty paths, and file contents at commits."""

    def __init__(self, root: Path):
        self.root = root
        self.head = self._run("rev-parse", "HEAD")
        status = self._run("status", "--porcelain", "--untracked-files=normal", "--", ".")
        self.dirty = sorted(line[3:] for line in (status or "").splitlines() if line.strip())
        self._blob_md5: dict[tuple[str, str], str | None] = {}
        self._touching: dict[tuple[str, ...], list[str]] = {}
        self._versions: dict[tuple, dict] = {}

    def _run(self, *args: str) -> str | None:
        try:
            result = subprocess.run(
                ["git", *args], cwd=self.root, capture_output=True, text=True, check=False
            )
        except OSError:
            return None
        # Only trailing newlines go: a porcelain status line starts with a space.
        return result.stdout.rstrip("\n") if result.returncode == 0 else None

    def show(self, commit: str, path: str) -> bytes | None:
        try:
            result = subprocess.run(
                ["git", "show", f"{commit}:./{path}"], cwd=self.root, capture_output=True,
                check=False,
            )
        except OSError:
            return None
        return result.stdout if result.returncode == 0 else None

    def md5_at(self, commit: str, path: str) -> str | None:
        key = (commit, path)
        if key not in self._blob_md5:
            blob = self.show(commit, path)
            self._blob_md5[key] = None if blob is None else hashlib.md5(blob).hexdigest()
        return self._blob_md5[key]

    def commits_touching(self, paths: list[str]) -> list[str]:
        """The commits up to HEAD that changed any of ``paths``, newest first."""
        key = tuple(paths)
        if key not in self._touching:
            out = None if self.head is None else self._run("log", "--format=%H", self.head,
                                                            "--", *paths)
            self._touching[key] = out.split() if out else []
        return self._touching[key]

    def code_version(self, code: dict[str, str | None], on_disk: dict[str, str | None]) -> dict:
        """Where the code files with md5s ``code`` (from dvc.lock) are in git.

        ``commit``: the newest commit holding exactly these files (HEAD if it still does);
        ``introduced``: the commit that gave them these contents; ``state``: "HEAD",
        "older commit" (changed since), "uncommitted" (only the working tree has it) or
        "unknown"; ``dirty``: the stage's files that differ between HEAD and the tree.
        """
        key = (tuple(sorted(code.items())), tuple(sorted(on_disk.items())))
        if key not in self._versions:
            self._versions[key] = self._code_version(code, on_disk)
        return dict(self._versions[key])  # each link its own (a test compares them)

    def _code_version(self, code: dict[str, str | None], on_disk: dict[str, str | None]) -> dict:
        paths = sorted(code)
        dirty = sorted(p for p in paths if p in self.dirty or self._differs_from_head(p, on_disk))
        version: dict[str, Any] = {"commit": None, "introduced": None, "dirty": dirty}
        touching = self.commits_touching(paths)  # newest first
        for i, commit in enumerate(touching):
            if all(self.md5_at(commit, p) == code[p] for p in paths):
                # Held from ``commit`` until the next (newer) commit that touched the files.
                newest = self.head if i == 0 else self._run("rev-parse", f"{touching[i - 1]}^")
                state = "HEAD" if newest == self.head else "older commit"
                return version | {"commit": newest, "introduced": commit, "state": state}
        worktree = all(on_disk[p] == code[p] for p in paths)
        return version | {"state": "uncommitted" if worktree else "unknown"}

    def _differs_from_head(self, path: str, on_disk: dict[str, str | None]) -> bool:
        return self.head is not None and self.md5_at(self.head, path) != on_disk.get(path)

    def lock_versions(self):
        """(commit, dvc.lock text) of each committed dvc.lock, newest first (read lazily)."""
        for commit in self.commits_touching([LOCK_FILE]):
            blob = self.show(commit, LOCK_FILE)
            if blob is not None:
                yield commit, blob.decode()
