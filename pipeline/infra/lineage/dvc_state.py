"""What lineage reads from DVC: dvc.lock, the md5s DVC records and computes, its cache.

DVC's own code does each part that DVC defines:

- **dvc.lock**: checked against DVC's lock-file schema (``dvc.dvcfile.Lockfile.validate``),
  each dep and out read into DVC's ``Meta`` (dvc_data), as DVC's StageLoader fills a stage.
  The YAML itself is parsed with libyaml: DVC's loader (ruamel.yaml in pure Python) takes
  0.8 s for the 11,000 lines of the default grid's lock here, libyaml 0.1 s.
- **a directory's md5**: DVC's ``Tree`` (dvc_data) digests the manifest of the files DVC's
  ignore filter (``dvc.ignore.DvcIgnoreFilter``, i.e. the project's ``.dvcignore``) walks.
- **the manifest recorded for a directory out**: ``Tree.load`` from the cache that DVC's
  ``Repo`` configures (``Repo.cache.local``, ``cache.dir`` of .dvc/config(.local)).
- **a ``dvc add``-ed file**: its ``.dvc`` file loaded by DVC (``dvc.dvcfile.load_file``).

Not through ``Repo.index``, the stages as ``dvc status`` sees them: it joins dvc.lock onto
dvc.yaml's *current* stages by path, so a dep that dvc.lock records and dvc.yaml no longer
declares (a code file moved: exactly what makes a stage stale) is dropped, as is the entry
of a stage no longer in dvc.yaml; and it takes 1.2 s to load here. Lineage shows what dvc.lock
recorded. File md5s are hashlib's (DVC 3 hashes raw bytes) rather than DVC's state
database's: ``--verify`` re-hashes each file, where DVC trusts an unchanged mtime.

Importing DVC takes about 0.3 s; its Repo is opened (0.15 s) only when the cache or a .dvc
file is needed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from dvc.dvcfile import Lockfile, load_file
from dvc.exceptions import NotDvcRepoError
from dvc.fs import LocalFileSystem
from dvc.ignore import DvcIgnoreFilter
from dvc.repo import Repo
from dvc.utils.strictyaml import YAMLValidationError
from dvc_data.hashfile.hash_info import HASH_DIR_SUFFIX, HashInfo
from dvc_data.hashfile.meta import Meta
from dvc_data.hashfile.tree import Tree
from dvc_objects.errors import ObjectFormatError

from pipeline.infra import stage_table
from pipeline.infra.config import SAFE_LOADER
from pipeline.infra.io import file_md5

LOCK_FILE = stage_table.LOCK_FILE


class _YAML_LOADER(SAFE_LOADER):  # noqa: N801 -- a loader class, named as the constant it was
    """libyaml's loader (see the module docstring) with YAML 1.2's floats. DVC writes
    dvc.lock with ruamel.yaml (YAML 1.2), which spells 1.0e-6 as ``1e-06``; PyYAML (YAML 1.1)
    needs a dot and would read that as the string "1e-06", so a params value recorded in the
    lock would differ from params.yaml's."""


_YAML_LOADER.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class LineageError(ValueError):
    """The artifact cannot be traced (unknown to dvc.lock and without provenance)."""


def under(path: str, parent: str) -> bool:
    """``path`` is ``parent`` or lies inside it (project-relative POSIX paths)."""
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def ancestors(path: str) -> list[str]:
    """``path``'s parent folders, innermost first: "a/b/c" -> ["a/b", "a"]."""
    parts = path.split("/")
    return ["/".join(parts[:n]) for n in range(len(parts) - 1, 0, -1)]


# ----------------------------------------------------------------------------- dvc.lock


@dataclass(frozen=True)
class Entry:
    """A file or directory as dvc.lock (or a .dvc file) records it."""

    path: str
    md5: str | None
    nfiles: int | None = None

    @property
    def is_dir(self) -> bool:
        return bool(self.md5 and self.md5.endswith(HASH_DIR_SUFFIX))


@dataclass
class LockedStage:
    name: str
    cmd: str
    deps: list[Entry]
    outs: list[Entry]
    params: dict[str, Any]  # dotted key -> value, of params.yaml (other files: "file:key")

    @property
    def family(self) -> str:
        return self.name.split("@", 1)[0]


def _entry(raw: dict) -> Entry:
    meta = Meta.from_dict(raw)  # md5, size, nfiles, ... as DVC reads a lock entry
    return Entry(raw["path"], meta.md5, meta.nfiles)


def parse_lock(text: str, source: str = LOCK_FILE) -> dict[str, LockedStage]:
    """The stages of a dvc.lock's ``text``; ``source`` names it in errors."""
    try:
        doc = yaml.load(text, Loader=_YAML_LOADER) or {}
    except yaml.YAMLError as e:
        raise LineageError(f"{source}: not YAML ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("stages"), dict):
        raise LineageError(f"{source}: not a DVC lock file (no 'stages' mapping)")
    try:
        Lockfile.validate(doc, source)
    except YAMLValidationError as e:
        cause = "; ".join(str(err) for err in getattr(e.__cause__, "errors", [])) or str(e)
        raise LineageError(f"{source}: not a valid DVC lock file ({cause})") from e
    locked = {}
    for name, raw in doc["stages"].items():
        params: dict[str, Any] = {}
        for params_file, values in (raw.get("params") or {}).items():
            prefix = "" if params_file == stage_table.PARAMS_FILE else f"{params_file}:"
            params.update({prefix + key: value for key, value in values.items()})
        locked[name] = LockedStage(
            name=name,
            cmd=raw["cmd"] if isinstance(raw["cmd"], str) else " && ".join(raw["cmd"]),
            deps=[_entry(d) for d in raw.get("deps") or []],
            outs=[_entry(o) for o in raw.get("outs") or []],
            params=params,
        )
    return locked


# ----------------------------------------------------------------------------- hashing


def dir_md5(manifest: dict[str, str]) -> str:
    """DVC's md5 of a directory (``<md5>.dir``) with files ``manifest`` (relpath -> md5)."""
    tree = Tree.from_list([{"md5": md5, "relpath": rel} for rel, md5 in manifest.items()])
    tree.digest()
    return tree.hash_info.value


class Hasher:
    """md5 of files and directories on disk (DVC's values), each file hashed once."""

    def __init__(self, root: Path):
        self.root = Path(os.path.abspath(root))
        self._files: dict[str, str | None] = {}
        self._dirs: dict[str, dict[str, str] | None] = {}

    @property
    def count(self) -> int:
        return sum(md5 is not None for md5 in self._files.values())

    @cached_property
    def _ignore(self):
        """DVC's view of the tree: .dvcignore'd files (e.g. the .snakemake_timestamp
        Snakemake drops into directory outputs) are not part of a directory's md5."""
        fs = LocalFileSystem()
        return fs, DvcIgnoreFilter(fs, os.fspath(self.root))

    def file(self, path: str) -> str | None:
        if path not in self._files:
            full = self.root / path
            self._files[path] = file_md5(full) if full.is_file() else None
        return self._files[path]

    def manifest(self, path: str) -> dict[str, str] | None:
        """relpath -> md5 of every file under directory ``path`` (None if absent)."""
        if path not in self._dirs:
            full = self.root / path
            if not full.is_dir():
                self._dirs[path] = None
            else:
                fs, ignore = self._ignore
                files = ignore.find(fs, os.fspath(full))
                rels = sorted(Path(f).relative_to(full).as_posix() for f in files)
                self._dirs[path] = {rel: self.file(f"{path}/{rel}") for rel in rels}
        return self._dirs[path]

    def entry(self, entry: Entry) -> str | None:
        """The md5 of ``entry``'s path on disk in dvc.lock's spelling (None if absent)."""
        if entry.is_dir:
            manifest = self.manifest(entry.path)
            return None if manifest is None else dir_md5(manifest)
        return self.file(entry.path)


# ----------------------------------------------------------------------------- the repository


class DvcRepo:
    """The project's DVC repository (``dvc.repo.Repo``), opened on first use: its cache and
    its ``.dvc`` files."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._manifests: dict[str, dict[str, str] | None] = {}

    @cached_property
    def repo(self) -> Repo:
        try:
            return Repo(os.fspath(self.root))
        except NotDvcRepoError as e:
            raise LineageError(f"{self.root}: not a DVC repository ({e})") from e

    def close(self) -> None:
        if "repo" in self.__dict__:
            self.repo.close()

    @property
    def cache_dir(self) -> Path:
        """The DVC cache (``dvc cache dir``)."""
        return Path(self.repo.cache.local_cache_dir)

    def cached_file(self, md5: str) -> Path:
        """Where the DVC cache keeps the file of content ``md5`` (DVC's own layout, asked of
        DVC, not rebuilt here); it may not exist (never cached, or garbage-collected)."""
        return Path(self.repo.cache.local.oid_to_path(md5))

    def cached_manifest(self, md5: str) -> dict[str, str] | None:
        """relpath -> md5 of the directory with md5 ``md5`` as the DVC cache holds it (None
        if not there: a directory that is only a dep, or one not pulled)."""
        if md5 not in self._manifests:
            try:
                tree = Tree.load(self.repo.cache.local, HashInfo("md5", md5))
                self._manifests[md5] = {"/".join(key): oid.value for key, _, oid in tree}
            except (OSError, ObjectFormatError):
                self._manifests[md5] = None
        return self._manifests[md5]

    def tracked(self, dvc_file: str) -> list[Entry]:
        """The outs of a ``.dvc`` file (project-relative paths)."""
        stage = load_file(self.repo, os.fspath(self.root / dvc_file)).stage
        return [Entry(Path(out.fs_path).relative_to(self.root).as_posix(), out.hash_info.value,
                      out.meta.nfiles) for out in stage.outs]


def cache_dir(root: str | Path) -> Path:
    """The DVC cache of the project at ``root``, as DVC's config sets it."""
    repo = DvcRepo(Path(root).resolve())
    try:
        return repo.cache_dir
    finally:
        repo.close()


class Manifests:
    """The recorded content of directories. DVC keeps the manifest of each directory *output*
    in its cache; a directory that is only a *dep* has just its md5 in dvc.lock, so its
    manifest is read from disk when the files there hash to it."""

    def __init__(self, dvc: DvcRepo, hasher: Hasher):
        self.dvc = dvc
        self.hasher = hasher
        self._on_disk: dict[str, dict[str, str]] = {}  # md5 -> a manifest found on disk

    @property
    def cache(self) -> Path:
        return self.dvc.cache_dir

    def cached_file(self, md5: str) -> Path:
        return self.dvc.cached_file(md5)

    def get(self, md5: str | None, path: str | None = None) -> dict[str, str] | None:
        if not md5 or not Entry("", md5).is_dir:
            return None
        found = self.dvc.cached_manifest(md5) or self._on_disk.get(md5)
        if found is None and path is not None:
            on_disk = self.hasher.manifest(path)
            if on_disk is not None and dir_md5(on_disk) == md5:
                found = self._on_disk[md5] = on_disk
        return found
