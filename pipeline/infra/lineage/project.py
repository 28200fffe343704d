"""A DVC project as lineage sees it (its dvc.lock, cache, git and files), and the chain found.

:class:`Project` answers the lookups a trace makes: which stage of dvc.lock produced a path,
the md5 dvc.lock records for it, whether a ``.dvc`` file tracks it, and which stages made up
a directory a stage read. Its indexes make each lookup a few dict hits, not a scan of every
out of dvc.lock (a grid of 100 runs has some 400).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.infra.lineage.dvc_state import (
    LOCK_FILE,
    DvcRepo,
    Entry,
    Hasher,
    LineageError,
    LockedStage,
    Manifests,
    ancestors,
    parse_lock,
    under,
)
from pipeline.infra.lineage.git import Git


@dataclass
class Link:
    """One stage of the chain, as dvc.lock records it."""

    stage: str
    cmd: str
    depth: int  # 0: the stage that made the artifact
    outs: list[dict]  # path, md5 (, nfiles)
    params: dict[str, Any]
    params_digest: str
    code: list[dict]  # path, md5
    code_version: dict
    inputs: list[dict]  # path, md5 (, nfiles), from: [stage], read: [file] | None, other_files
    datasets: list[str]
    problems: list[dict] = field(default_factory=list)


@dataclass
class Lineage:
    artifact: dict
    repository: dict
    lock: str
    provenance: dict | None
    links: list[Link]
    raw: list[dict]
    verified: bool = False
    hashed_files: int = 0
    problems: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


class Project:
    """A DVC project's lock, cache, git and files, for tracing."""

    def __init__(self, root: Path, lock: dict[str, LockedStage] | None = None, lock_src=None,
                 like: Project | None = None):
        """The project at ``root`` with its dvc.lock, or with ``lock`` (an older one, read
        from ``lock_src``); ``like``: a project of the same root whose git, hashes and DVC
        repository to share."""
        self.root = Path(root).resolve()
        self.git = like.git if like else Git(self.root)
        self.hasher = like.hasher if like else Hasher(self.root)
        self.dvc = like.dvc if like else DvcRepo(self.root)
        self.manifests = like.manifests if like else Manifests(self.dvc, self.hasher)
        if lock is None:
            path = self.root / LOCK_FILE
            if not path.exists():
                raise LineageError(f"{path}: no dvc.lock (has the pipeline been run?)")
            lock, lock_src = parse_lock(path.read_text(), str(path)), LOCK_FILE
        self.lock = lock
        self.lock_source = lock_src
        self.outs: list[tuple[LockedStage, Entry]] = [
            (stage, out) for stage in lock.values() for out in stage.outs
        ]
        self._by_path: dict[str, list[int]] = defaultdict(list)  # out path -> its positions
        self._inside: dict[str, list[int]] = defaultdict(list)  # folder -> outs under it
        for i, (_, out) in enumerate(self.outs):
            self._by_path[out.path].append(i)
            for folder in ancestors(out.path):
                self._inside[folder].append(i)
        self._tracked: dict[str, tuple[str, Entry] | None] = {}

    def close(self) -> None:
        self.dvc.close()

    # -- lookups

    def locate(self, artifact: str) -> Path:
        """The file ``artifact`` names: a relative path from the current directory if it
        exists there, else from the project root."""
        path = Path(artifact)
        if not path.is_absolute():
            path = Path.cwd() / path if (Path.cwd() / path).exists() else self.root / path
        return Path(os.path.normpath(path))

    def relative(self, path: Path) -> str | None:
        """``path`` relative to the project root, or None if outside it."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return None

    def _holding(self, path: str) -> list[int]:
        """Positions of the outs that are ``path`` or a folder holding it."""
        return [i for p in [path, *ancestors(path)] for i in self._by_path.get(p, ())]

    def producer_of(self, path: str) -> tuple[LockedStage, Entry] | None:
        """The stage and out (the file itself, or a directory holding it) that made ``path``."""
        found = self._holding(path)
        return self.outs[min(found)] if found else None

    def has_produced_members(self, folder: str) -> bool:
        """Whether some out of dvc.lock lies inside ``folder``."""
        return folder in self._inside

    def recorded_md5(self, path: str) -> str | None:
        """md5 of ``path`` as dvc.lock records it (a member of a directory out: from the
        directory's manifest in the cache)."""
        found = self.producer_of(path)
        if found is None:
            return None
        _, out = found
        if out.path == path:
            return out.md5
        manifest = self.manifests.get(out.md5, out.path) or {}
        return manifest.get(path[len(out.path) + 1 :])

    def dvc_tracked(self, path: str) -> tuple[str, Entry] | None:
        """(.dvc file, its out) if ``path`` is, or lies in, a ``dvc add``-ed file or folder."""
        if path not in self._tracked:
            self._tracked[path] = None
            for candidate in [path, *ancestors(path)]:
                dvc_file = f"{candidate}.dvc"
                if not (self.root / dvc_file).is_file():
                    continue
                for out in self.dvc.tracked(dvc_file):
                    if under(path, out.path):
                        self._tracked[path] = dvc_file, out
                        break
                if self._tracked[path] is not None:
                    break
        return self._tracked[path]

    def producers(self, dep: Entry, read: set[str] | None) -> tuple[list, list[str]]:
        """Stages whose outs make up ``dep``, and the other files of a directory dep.

        ``read``: the files of the dep the stage actually read, when known (a grid-wide
        stage reads its grid's per-run files; a figure names its inputs). Otherwise a
        directory dep is narrowed to the files its recorded manifest lists. Either way, runs
        of an earlier grid whose entries are still in dvc.lock (DVC keeps a removed stage's
        entry) are not counted. The other files: in the directory but not read (``read``
        known), or made by no stage of dvc.lock."""
        manifest = None
        if dep.is_dir:  # as recorded; else (changed since) as on disk now, the best guess
            manifest = self.manifests.get(dep.md5, dep.path) or self.hasher.manifest(dep.path)
        listed = None if manifest is None else _with_folders(manifest)  # relative to dep
        reached = None if read is None else _with_folders(read)
        positions = self._holding(dep.path)  # the dep is an out, or a file inside one
        for i in self._inside.get(dep.path, ()):  # outs inside the dep
            path = self.outs[i][1].path
            if listed is not None and path[len(dep.path) + 1 :] not in listed:
                continue
            if reached is not None and path not in reached:
                continue
            positions.append(i)
        found = [self.outs[i] for i in sorted(positions)]  # in dvc.lock's order
        other: list[str] = []
        if manifest is not None:
            covered = read if read is not None else {o.path for _, o in found}
            other = sorted(
                rel for rel in manifest
                if not any(p in covered for p in [f"{dep.path}/{rel}",
                                                  *ancestors(f"{dep.path}/{rel}")])
            )
        return found, other


def _with_folders(paths) -> set[str]:
    """``paths`` and every folder holding one of them."""
    return {q for p in paths for q in [p, *ancestors(p)]}
