"""``python -m pipeline lineage <artifact>``: the chain of stages that made an artifact, back
to the raw data, read from dvc.lock; ``--verify`` re-hashes every link.

An artifact is any file DVC records (a figure, a metrics file, an embedding, a checkpoint, a
file inside a directory output), a stage name (``train@digits-ce-0.0-0``), or a PNG/PDF
figure outside the repository: figures carry a provenance record (pipeline/infra/provenance.py)
whose input md5s are looked up in dvc.lock, or in an older committed dvc.lock.

Each link is one stage of dvc.lock with its outputs (path, md5), the params values it was
made with, its code files (md5) and the git commit holding that code (a dirty working tree
is flagged), and the inputs it read with the stages that produced them. The walk goes
upstream through deps: a dep is another stage's output (followed), a file tracked by a
``.dvc`` file (raw data: the end of the chain), or a source file (the stage's code). Stages
that declare ``datasets.<name>`` params read that dataset's raw file directly (for digits,
the copy shipped in scikit-learn); it ends the chain too.

dvc.lock is parsed as YAML rather than through ``dvc.repo.Repo``: it is DVC's documented
record format, reading it takes milliseconds, and an old version of it can be read from git
without a checkout. (``dvc dag --outs`` crashes in DVC 3.67.1.)

``--verify`` re-hashes every file of every link and names each problem:
- ``missing``: an output recorded in dvc.lock is not on disk;
- ``tampered``: an output's bytes differ from dvc.lock (edited after its stage ran), or a
  raw file differs from its record (.dvc file, or the figure's provenance);
- ``stale``: the stage would rerun: a code file, a params value or an input differs from what
  dvc.lock records for it, or its recorded input is not what the upstream stage produced;
- ``provenance``: the figure's embedded record disagrees with dvc.lock.
The exit status is 1 if there is any problem.
"""

from __future__ import annotations

import configparser
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pathspec
import yaml

from pipeline.infra import provenance, stage_table
from pipeline.infra.config import ParamsError, digest, lookup
from pipeline.infra.nested import MISSING, differences

LOCK_FILE = stage_table.LOCK_FILE
DATASET_PARAM = "datasets."  # a stage reading `datasets.<name>` reads that raw dataset
PROVENANCE_STAGE = " (from the embedded provenance)"  # suffix of a link read from a figure

try:  # libyaml's loader: dvc.lock of the default grid is ~6,000 lines
    _YAML_LOADER: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _YAML_LOADER = yaml.SafeLoader


class LineageError(ValueError):
    """The artifact cannot be traced (unknown to dvc.lock and without provenance)."""


# ----------------------------------------------------------------------------- dvc.lock


@dataclass(frozen=True)
class Entry:
    """A file or directory as dvc.lock (or a .dvc file) records it."""

    path: str
    md5: str | None
    nfiles: int | None = None

    @property
    def is_dir(self) -> bool:
        return bool(self.md5 and self.md5.endswith(".dir"))


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
    return Entry(raw["path"], raw.get("md5"), raw.get("nfiles"))


def parse_lock(text: str, source: str = LOCK_FILE) -> dict[str, LockedStage]:
    doc = yaml.load(text, Loader=_YAML_LOADER) or {}
    if not isinstance(doc, dict) or not isinstance(doc.get("stages"), dict):
        raise LineageError(f"{source}: not a DVC lock file (no 'stages' mapping)")
    locked = {}
    for name, raw in doc["stages"].items():
        params: dict[str, Any] = {}
        for params_file, values in (raw.get("params") or {}).items():
            prefix = "" if params_file == stage_table.PARAMS_FILE else f"{params_file}:"
            params.update({prefix + key: value for key, value in values.items()})
        locked[name] = LockedStage(
            name=name,
            cmd=raw.get("cmd", ""),
            deps=[_entry(d) for d in raw.get("deps") or []],
            outs=[_entry(o) for o in raw.get("outs") or []],
            params=params,
        )
    return locked


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


# ----------------------------------------------------------------------------- hashing


def dir_md5(manifest: dict[str, str]) -> str:
    """DVC's hash of a directory: md5 of its sorted JSON manifest, with suffix ``.dir``."""
    entries = [{"md5": md5, "relpath": rel} for rel, md5 in sorted(manifest.items())]
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


class Hasher:
    """md5 of files and directories on disk (DVC's values), each path hashed once."""

    def __init__(self, root: Path):
        self.root = root
        self._files: dict[str, str | None] = {}
        self._dirs: dict[str, dict[str, str] | None] = {}
        # DVC leaves files matched by .dvcignore out of a directory's hash (e.g. the
        # .snakemake_timestamp Snakemake drops into directory outputs): so must we.
        ignore = root / ".dvcignore"
        lines = ignore.read_text().splitlines() if ignore.is_file() else []
        self._ignored = pathspec.PathSpec.from_lines("gitwildmatch", lines)

    @property
    def count(self) -> int:
        return sum(md5 is not None for md5 in self._files.values())

    def file(self, path: str) -> str | None:
        if path not in self._files:
            full = self.root / path
            self._files[path] = provenance.file_md5(full) if full.is_file() else None
        return self._files[path]

    def manifest(self, path: str) -> dict[str, str] | None:
        """relpath -> md5 of every file under directory ``path`` (None if absent)."""
        if path not in self._dirs:
            full = self.root / path
            if not full.is_dir():
                self._dirs[path] = None
            else:
                manifest = {}
                for dirpath, _, files in os.walk(full):
                    for name in files:
                        rel = Path(dirpath, name).relative_to(full).as_posix()
                        if self._ignored.match_file(f"{path}/{rel}"):
                            continue
                        manifest[rel] = self.file(f"{path}/{rel}")
                self._dirs[path] = manifest
        return self._dirs[path]

    def entry(self, entry: Entry) -> str | None:
        """The md5 of ``entry``'s path on disk in dvc.lock's spelling (None if absent)."""
        if entry.is_dir:
            manifest = self.manifest(entry.path)
            return None if manifest is None else dir_md5(manifest)
        return self.file(entry.path)


def _dvc_cache_dir(root: Path) -> Path:
    """The DVC cache (cache.dir of .dvc/config.local or .dvc/config, else .dvc/cache)."""
    for name in ("config.local", "config"):
        config = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            config.read(root / ".dvc" / name)
        except configparser.Error:
            continue
        if config.has_option("cache", "dir"):
            return (root / ".dvc" / config.get("cache", "dir").strip("'\"")).resolve()
    return root / ".dvc" / "cache"


class Manifests:
    """The recorded content of directories. DVC keeps the manifest of each directory *output*
    in its cache (``files/md5/<2>/<30>.dir``); a directory that is only a *dep* has just its
    md5 in dvc.lock, so its manifest is read from disk when the files there hash to it."""

    def __init__(self, root: Path, hasher: Hasher):
        self.cache = _dvc_cache_dir(root)
        self.hasher = hasher
        self._loaded: dict[str, dict[str, str] | None] = {}

    def get(self, md5: str | None, path: str | None = None) -> dict[str, str] | None:
        if not md5 or not md5.endswith(".dir"):
            return None
        if md5 not in self._loaded:
            cached = self.cache / "files" / "md5" / md5[:2] / md5[2:]
            try:
                entries = json.loads(cached.read_text())
                self._loaded[md5] = {e["relpath"]: e["md5"] for e in entries}
            except (OSError, ValueError, KeyError, TypeError):
                self._loaded[md5] = None  # not in this cache (a dep, or not pulled)
        if self._loaded[md5] is None and path is not None:
            on_disk = self.hasher.manifest(path)
            if on_disk is not None and dir_md5(on_disk) == md5:
                self._loaded[md5] = on_disk
        return self._loaded[md5]


# ----------------------------------------------------------------------------- git


class Git:
    """The code version of a set of files: which commit holds exactly the recorded md5s."""

    def __init__(self, root: Path):
        self.root = root
        self.head = self._run("rev-parse", "HEAD")
        status = self._run("status", "--porcelain", "--untracked-files=normal", "--", ".")
        self.dirty = sorted(line[3:] for line in (status or "").splitlines() if line.strip())
        self._blob_md5: dict[tuple[str, str], str | None] = {}

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
            )  # fmt: skip
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
        if self.head is None:
            return []
        out = self._run("log", "--format=%H", self.head, "--", *paths)
        return out.split() if out else []

    def code_version(self, code: dict[str, str | None], on_disk: dict[str, str | None]) -> dict:
        """Where the code files with md5s ``code`` (from dvc.lock) are in git.

        ``commit``: the newest commit holding exactly these files (HEAD if it still does);
        ``introduced``: the commit that gave them these contents; ``state``: "HEAD",
        "older commit" (changed since), "uncommitted" (only the working tree has it) or
        "unknown"; ``dirty``: the stage's files that differ between HEAD and the tree.
        """
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

    def lock_versions(self) -> list[tuple[str, str]]:
        """(commit, dvc.lock text) of every committed dvc.lock, newest first."""
        versions = []
        for commit in self.commits_touching([LOCK_FILE]):
            blob = self.show(commit, LOCK_FILE)
            if blob is not None:
                versions.append((commit, blob.decode()))
        return versions


# ----------------------------------------------------------------------------- the chain


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

    def __init__(self, root: Path, lock: dict[str, LockedStage] | None = None, lock_src=None):
        self.root = root.resolve()
        self.git = Git(self.root)
        self.hasher = Hasher(self.root)
        self.manifests = Manifests(self.root, self.hasher)
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

    def producer_of(self, path: str) -> tuple[LockedStage, Entry] | None:
        """The stage and out (the file itself, or a directory holding it) that made ``path``."""
        for stage, out in self.outs:
            if _under(path, out.path):
                return stage, out
        return None

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
        parts = Path(path).parts
        for n in range(len(parts), 0, -1):
            candidate = Path(*parts[:n])
            dvc_file = self.root / f"{candidate.as_posix()}.dvc"
            if dvc_file.is_file():
                doc = yaml.safe_load(dvc_file.read_text()) or {}
                for out in doc.get("outs") or []:
                    out_path = (candidate.parent / out["path"]).as_posix()
                    if _under(path, out_path):
                        rel = dvc_file.relative_to(self.root).as_posix()
                        return rel, Entry(out_path, out.get("md5"), out.get("nfiles"))
        return None

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
        found = []
        for stage, out in self.outs:
            if _under(dep.path, out.path):
                found.append((stage, out))  # the dep is this out, or a file inside it
                continue
            if not _under(out.path, dep.path):
                continue
            rel = out.path[len(dep.path) + 1 :]
            if manifest is not None and not any(_under(m, rel) for m in manifest):
                continue
            if read is not None and not any(_under(p, out.path) for p in read):
                continue
            found.append((stage, out))
        other: list[str] = []
        if manifest is not None:
            covered = read if read is not None else {o.path for _, o in found}
            other = sorted(
                rel for rel in manifest
                if not any(_under(f"{dep.path}/{rel}", c) for c in covered)
            )  # fmt: skip
        return found, other


def _grid_reads(stage: LockedStage) -> dict[str, set[str]]:
    """dep path -> the per-run files a grid-wide stage of the table reads from that folder:
    its ``GridDir`` patterns over the grid recorded for it (as rules/common.smk expands
    them), so a run outside the grid, though on disk, is not in its lineage."""
    spec = stage_table.BY_NAME.get(stage.family)
    grid = stage.params.get("grid")
    if spec is None or not isinstance(grid, dict):
        return {}
    try:
        jobs = stage_table.grid_jobs(stage_table.GEOMETRY, grid)
    except (KeyError, TypeError):
        return {}
    return {
        dep.path: {stage_table.fill(pattern, **job) for pattern in dep.patterns for job in jobs}
        for dep in spec.deps.values()
        if isinstance(dep, stage_table.GridDir)
    }


def _datasets(params: dict[str, Any]) -> list[str]:
    return sorted(k[len(DATASET_PARAM) :] for k in params if k.startswith(DATASET_PARAM))


def _version_of(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def trace(artifact: str, root: str | Path = ".", verify: bool = False) -> Lineage:
    """The lineage of ``artifact`` in the project at ``root``; ``verify`` re-hashes it."""
    project = Project(Path(root))
    path = project.locate(artifact)
    rel = project.relative(path)
    record = _read_record(path)
    start: list[LockedStage]
    art: dict[str, Any] = {"argument": artifact, "path": rel}
    only: set[str] | None = None
    if artifact in project.lock:
        start, art["stage"] = [project.lock[artifact]], artifact
    elif rel is not None and project.producer_of(rel) is not None:
        stage, out = project.producer_of(rel)
        start = [stage]
        art |= {"stage": stage.name, "md5": project.recorded_md5(rel), "out": out.path}
        if out.path != rel:
            art |= {"out_md5": out.md5}
        if record is not None:
            only = set(record["inputs"])
    elif rel is not None and project.dvc_tracked(rel) is not None:
        start = []
        dvc_file, entry = project.dvc_tracked(rel)
        art |= {"tracked_by": dvc_file, "md5": entry.md5}
    elif record is not None:
        project, start, art = _from_provenance(project, record, art)
        only = set(record["inputs"])
    else:
        where = f"{project.root}/dvc.lock" if rel is not None else f"the project at {project.root}"
        raise LineageError(
            f"{path}: not an output of any stage in {where}, not tracked by a .dvc file, "
            "and not a figure carrying a provenance record"
        )
    if path.is_file():
        art["md5_on_disk"] = provenance.file_md5(path)
    lineage = Lineage(
        artifact=art,
        repository={"root": str(project.root), "head": project.git.head,
                    "dirty": project.git.dirty},  # fmt: skip
        lock=project.lock_source,
        provenance=record,
        links=[],
        raw=[],
    )
    _walk(project, lineage, start, only)
    if rel is not None and "tracked_by" in art:
        lineage.raw.append({"path": rel, "md5": art["md5"], "tracked_by": art["tracked_by"],
                            "used_by": []})  # fmt: skip
    if verify:
        _verify(project, lineage)
    return lineage


def _read_record(path: Path) -> dict | None:
    if path.suffix.lower() not in (".png", ".pdf") or not path.is_file():
        return None
    try:
        return provenance.read_provenance(path)
    except provenance.NoProvenance:
        return None


def _from_provenance(project: Project, record: dict, art: dict):
    """A figure outside dvc.lock: find the lock (current, else committed) that produced
    every input the figure records, and start the walk at those producers."""
    candidates = [(project.lock, project.lock_source)]
    candidates += [
        (parse_lock(text, f"{LOCK_FILE}@{commit}"), f"{LOCK_FILE} at commit {commit}")
        for commit, text in project.git.lock_versions()
    ]
    for lock, source in candidates:
        trial = Project(project.root, lock, source)
        found = []
        for path, md5 in record["inputs"].items():
            producer = trial.producer_of(path)
            if producer is None or trial.recorded_md5(path) != md5:
                break
            found.append(producer[0])
        else:
            art |= {"stage": f"{record['stage']}{PROVENANCE_STAGE}"}
            return trial, list(dict.fromkeys(s.name for s in found)), art
    raise LineageError(
        f"{art['argument']}: its provenance names inputs that no dvc.lock (working tree or "
        "committed) records with the same md5"
    )


def _walk(project: Project, lineage: Lineage, start, figure_inputs: set[str] | None) -> None:
    """Breadth-first upstream from the ``start`` stages (names or LockedStage).

    ``figure_inputs``: the files the artifact (a figure) was drawn from, by its provenance;
    the first stage's other data deps are not followed."""
    from_record = lineage.artifact.get("stage", "").endswith(PROVENANCE_STAGE)
    queue = [(project.lock[s] if isinstance(s, str) else s, 1 if from_record else 0)
             for s in start]  # fmt: skip
    if from_record:
        lineage.links.append(_provenance_link(lineage))
    seen = {stage.name for stage, _ in queue}
    raw_users: dict[str, list[str]] = defaultdict(list)
    raw_files: dict[str, dict] = {}
    while queue:
        stage, depth = queue.pop(0)
        reads = _grid_reads(stage)
        code, inputs = [], []
        for dep in stage.deps:
            read = reads.get(dep.path)
            if depth == 0 and figure_inputs is not None:
                read = {p for p in figure_inputs if _under(p, dep.path)}
            producers, other = project.producers(dep, read)
            if read is not None and not read and producers == []:
                if project.producer_of(dep.path) or _has_produced_members(project, dep):
                    continue  # a data input this figure was not drawn from
            tracked = None if producers else project.dvc_tracked(dep.path)
            if producers:
                item = {"path": dep.path, "md5": dep.md5, "nfiles": dep.nfiles,
                        "from": sorted({s.name for s, _ in producers}), "other_files": other,
                        "read": None if read is None else sorted(read)}  # fmt: skip
                inputs.append(item)
                for producer, _ in producers:
                    if producer.name not in seen:
                        seen.add(producer.name)
                        queue.append((producer, depth + 1))
            elif tracked is not None:
                dvc_file, entry = tracked
                inputs.append({"path": dep.path, "md5": dep.md5, "nfiles": dep.nfiles,
                               "from": [dvc_file], "other_files": [], "read": None})
                raw_files.setdefault(dep.path, {"path": dep.path, "md5": entry.md5,
                                                "tracked_by": dvc_file, "used_by": []})
                raw_files[dep.path]["used_by"].append(stage.name)
            else:
                code.append({"path": dep.path, "md5": dep.md5})
        on_disk = {c["path"]: project.hasher.file(c["path"]) for c in code}
        version = project.git.code_version({c["path"]: c["md5"] for c in code}, on_disk)
        datasets = _datasets(stage.params)
        for name in datasets:
            raw_users[name].append(stage.name)
        lineage.links.append(
            Link(
                stage=stage.name,
                cmd=stage.cmd,
                depth=depth,
                outs=[_entry_dict(o) for o in stage.outs],
                params=stage.params,
                params_digest=digest(stage.params),
                code=code,
                code_version=version,
                inputs=inputs,
                datasets=datasets,
            )
        )
    lineage.raw += list(raw_files.values())
    recorded = (lineage.provenance or {}).get("raw", {})
    for name, users in sorted(raw_users.items()):
        source = provenance.RAW_SOURCES.get(name)
        params = project.lock[users[0]].params.get(DATASET_PARAM + name)
        item: dict[str, Any] = {"dataset": name, "used_by": users}
        current = provenance.raw_record(name, params, project.root)
        if source is not None and current is not None:
            item |= current
            if source.package is not None:
                item |= {"package": source.package, "version": _version_of(source.package)}
            published = source.published_md5(params or {})
            if published is not None:
                item["published_md5"] = published
            tracked = project.dvc_tracked(current["path"])
            if tracked is not None:
                item |= {"tracked_by": tracked[0], "recorded_md5": tracked[1].md5}
        if name in recorded:
            item["recorded_md5"] = recorded[name]["md5"]
        lineage.raw.append(item)


def _has_produced_members(project: Project, dep: Entry) -> bool:
    return any(_under(out.path, dep.path) for _, out in project.outs)


def _provenance_link(lineage: Lineage) -> Link:
    record = lineage.provenance
    art = lineage.artifact
    return Link(
        stage=art["stage"],
        cmd="",
        depth=0,
        outs=[{"path": art["argument"], "md5": art.get("md5_on_disk")}],
        params=record["params"],
        params_digest=record["params_digest"],
        code=[{"path": p, "md5": m} for p, m in sorted(record["code"].items())],
        code_version={},
        inputs=[{"path": p, "md5": m, "nfiles": None, "from": [], "other_files": [], "read": None}
                for p, m in sorted(record["inputs"].items())],  # fmt: skip
        datasets=sorted(record.get("raw", {})),
    )


def _entry_dict(entry: Entry) -> dict:
    out = {"path": entry.path, "md5": entry.md5}
    if entry.nfiles is not None:
        out["nfiles"] = entry.nfiles
    return out


# ----------------------------------------------------------------------------- verify


def _current_params(root: Path) -> dict | None:
    try:
        return yaml.safe_load((root / stage_table.PARAMS_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None


def _lookup(tree: Any, dotted: str) -> Any:
    """The value at a dotted key, or config.MISSING (the recorded params may predate it)."""
    try:
        return lookup(tree, dotted)
    except ParamsError:
        return MISSING


def _param_changes(key: str, was: Any, now: Any) -> list[tuple[str, str, str]]:
    """(dotted key, recorded, current) of each leaf that differs; "absent" if missing."""
    def show(value):
        return "absent" if value is MISSING else json.dumps(value)

    return [(f"{key}.{sub}" if sub else key, show(old), show(new))
            for sub, old, new in differences(was, now)]


def _problem(problems: list, link: Link | None, kind: str, path: str, detail: str) -> None:
    item = {"stage": link.stage if link else None, "kind": kind, "path": path, "detail": detail}
    problems.append(item)
    if link is not None:
        link.problems.append(item)


def _verify(project: Project, lineage: Lineage) -> None:
    """Re-hash every link; record each problem on its link and in ``lineage.problems``."""
    problems = lineage.problems
    h = project.hasher
    params_now = _current_params(project.root)
    produced = {o.path: (s, o) for s, o in project.outs}
    for link in lineage.links:
        if link.depth == 0 and link.stage not in project.lock:
            continue  # the provenance link: checked against dvc.lock below
        for out in link.outs:
            _check_out(project, link, Entry(out["path"], out["md5"]), problems)
        _check_code_set(link, problems)
        for code in link.code:
            now = h.file(code["path"])
            if now != code["md5"]:
                state = "is missing" if now is None else f"is {now} (recorded {code['md5']})"
                _problem(problems, link, "stale", code["path"], f"code changed: md5 {state}")
        for key, value in link.params.items():
            now = MISSING if params_now is None or ":" in key else _lookup(params_now, key)
            if now is MISSING:
                _problem(problems, link, "stale", stage_table.PARAMS_FILE,
                         f"params key {key!r} is no longer in {stage_table.PARAMS_FILE}")
            elif now != value:
                for sub, was, is_ in _param_changes(key, value, now):
                    _problem(problems, link, "stale", stage_table.PARAMS_FILE,
                             f"params {sub} = {is_} (recorded {was})")
        for item in link.inputs:
            entry = Entry(item["path"], item["md5"], item["nfiles"])
            now = h.entry(entry)
            if now != entry.md5:
                _problem(problems, link, "stale", entry.path,
                         f"input changed since the stage ran: md5 {now} (recorded {entry.md5})")
            source = produced.get(entry.path)
            if source is not None and source[1].md5 != entry.md5:
                _problem(problems, link, "stale", entry.path,
                         f"made from md5 {entry.md5}, but {source[0].name} last produced "
                         f"{source[1].md5}")
    _verify_artifact(project, lineage)
    _verify_provenance(project, lineage)
    for raw in lineage.raw:
        _verify_raw(project, lineage, raw)
    lineage.verified = not problems
    lineage.hashed_files = project.hasher.count


def _check_code_set(link: Link, problems: list) -> None:
    """A stage of the table whose code files differ from those dvc.lock records (a file
    added to or dropped from ``Stage.code``) would rerun: ``dvc status`` says deps changed."""
    stage = stage_table.BY_NAME.get(link.stage.split("@", 1)[0])
    if stage is None:
        return
    recorded = {c["path"] for c in link.code}
    declared = set(stage.code)
    for path in sorted(declared - recorded):
        _problem(problems, link, "stale", path,
                 "code file declared in pipeline/infra/stage_table.py but not recorded in dvc.lock")
    for path in sorted(recorded - declared):
        _problem(problems, link, "stale", path,
                 "code file recorded in dvc.lock but no longer declared in "
                 "pipeline/infra/stage_table.py")


def _check_out(project: Project, link: Link, out: Entry, problems: list) -> None:
    now = project.hasher.entry(out)
    if now is None:
        _problem(problems, link, "missing", out.path, "recorded in dvc.lock, not on disk")
        return
    if now == out.md5:
        return
    detail = f"md5 on disk {now}, dvc.lock {out.md5}"
    recorded = project.manifests.get(out.md5)
    if out.is_dir and recorded is not None:
        current = project.hasher.manifest(out.path) or {}
        changed = sorted(r for r in recorded if r in current and current[r] != recorded[r])
        added = sorted(set(current) - set(recorded))
        removed = sorted(set(recorded) - set(current))
        parts = [f"{label}: {', '.join(names)}" for label, names in
                 (("changed", changed), ("added", added), ("removed", removed)) if names]
        detail += " (" + "; ".join(parts) + ")"
    _problem(problems, link, "tampered", out.path, detail)


def _verify_artifact(project: Project, lineage: Lineage) -> None:
    art = lineage.artifact
    path = art.get("path")
    if path is None or "out_md5" not in art:
        return  # a whole out (checked with its link) or outside the project
    if art.get("md5") is None:
        return  # the directory's manifest is not in this cache: the directory check decides
    link = lineage.links[0] if lineage.links else None
    now = project.hasher.file(path)
    if now != art["md5"]:
        _problem(lineage.problems, link, "tampered", path,
                 f"md5 on disk {now}, recorded in {art['out']} {art['md5']}")


def _verify_provenance(project: Project, lineage: Lineage) -> None:
    """The figure's own record against dvc.lock: same code, params and inputs."""
    record = lineage.provenance
    if record is None:
        return
    link = lineage.links[0] if lineage.links else None
    stage = project.lock.get(link.stage) if link else None
    problems = lineage.problems
    if stage is not None:
        locked_code = {d.path: d.md5 for d in stage.deps}
        for path, md5 in record["code"].items():
            if path in locked_code and locked_code[path] != md5:
                _problem(problems, link, "provenance", path,
                         f"figure was drawn by code md5 {md5}, dvc.lock records "
                         f"{locked_code[path]}")
        locked = {k: stage.params.get(k) for k in record["params"]}
        if digest(locked) != record["params_digest"]:
            _problem(problems, link, "provenance", stage_table.PARAMS_FILE,
                     f"figure's params digest {record['params_digest']} differs from "
                     f"dvc.lock's {digest(locked)}")
    for path, md5 in record["inputs"].items():
        recorded = project.recorded_md5(path)
        if recorded != md5:
            _problem(problems, link, "provenance", path,
                     f"figure was drawn from md5 {md5}, dvc.lock records {recorded}")
        now = project.hasher.file(path)
        if now != md5 and link is not None and link.stage not in project.lock:
            _problem(problems, link, "stale", path,
                     f"figure was drawn from md5 {md5}, on disk now {now}")


def _verify_raw(project: Project, lineage: Lineage, raw: dict) -> None:
    if "tracked_by" in raw and "dataset" not in raw:
        entry = Entry(raw["path"], raw["md5"])
        tracked = project.dvc_tracked(raw["path"])
        if tracked is not None:
            entry = tracked[1]
        now = project.hasher.entry(entry)
        if now != entry.md5:
            state = "missing" if now is None else "tampered"
            _problem(lineage.problems, None, state, entry.path,
                     f"md5 on disk {now}, {raw['tracked_by']} records {entry.md5}")
        return
    if "path" not in raw:
        return  # no registered raw source for this dataset
    if raw["md5"] is None:
        _problem(lineage.problems, None, "missing", raw["path"],
                 f"raw data of {raw['dataset']!r} is not on disk")
        return
    where = ("the figure's provenance" if raw.get("tracked_by") is None else raw["tracked_by"])
    for label, expected in ((where, raw.get("recorded_md5")),
                            ("the published checksum", raw.get("published_md5"))):
        if expected is not None and expected != raw["md5"]:
            _problem(lineage.problems, None, "tampered", raw["path"],
                     f"raw data of {raw['dataset']!r}: md5 now {raw['md5']}, {label} is "
                     f"{expected}")


# ----------------------------------------------------------------------------- text


def _short(commit: str | None) -> str:
    return commit[:12] if commit else "-"


def _code_line(version: dict) -> str:
    state = version.get("state")
    if state == "HEAD":
        text = f"commit {_short(version['commit'])} (HEAD)"
        if version["introduced"] != version["commit"]:
            text = f"code of commit(s) {_short(version['introduced'])}..HEAD"
            text += f" ({_short(version['commit'])})"
    elif state == "older commit":
        held = _short(version["commit"])
        if version["introduced"] != version["commit"]:
            held = f"{_short(version['introduced'])}..{held}"
        text = f"code of commit(s) {held}, changed since"
    elif state == "uncommitted":
        text = "uncommitted code (only in the working tree)"
    elif state:
        text = "code not found in git history or the working tree"
    else:
        text = "as recorded in the figure"
    if version.get("dirty"):
        text += f"; DIRTY: {', '.join(version['dirty'])} differ from HEAD"
    return text


def _fmt_entry(item: dict, width: int) -> str:
    extra = f"  ({item['nfiles']} files)" if item.get("nfiles") else ""
    return f"{item['path']:<{width}}  {item['md5']}{extra}"


def _value(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "))


def _families(links: list[Link]) -> dict[str, list[Link]]:
    families: dict[str, list[Link]] = {}
    for link in links:
        families.setdefault(link.stage.split("@", 1)[0], []).append(link)
    return families


def _from_text(names: list[str]) -> str:
    counts = Counter(n.split("@", 1)[0] for n in names)
    if len(names) == 1:
        return names[0]
    return ", ".join(f"{fam} x{n}" if n > 1 else fam for fam, n in counts.items())


def render_text(lineage: Lineage) -> str:
    lines = []
    art = lineage.artifact
    repo = lineage.repository
    lines.append(f"lineage of {art['argument']}")
    if "stage" in art:
        where = f"made by stage {art['stage']}"
        if art.get("out") and art["out"] != art.get("path"):
            where += f", inside its output {art['out']} ({art.get('out_md5')})"
        lines.append(f"  artifact   md5 {art.get('md5') or art.get('md5_on_disk')}, {where}")
    if "tracked_by" in art:
        lines.append(f"  artifact   md5 {art['md5']}, raw data tracked by {art['tracked_by']}")
    record = lineage.provenance
    if record is not None:
        raw = ", ".join(f"{k} {v['md5']}" for k, v in record.get("raw", {}).items())
        lines.append(
            f"  embedded   provenance record: params digest {record['params_digest']}, "
            f"{len(record['code'])} code files, {len(record['inputs'])} input files"
            + (f", raw {raw}" if raw else "")
        )
    dirty = repo["dirty"]
    tree = f"working tree DIRTY ({len(dirty)} paths: {', '.join(dirty[:6])}" + (
        ", ...)" if len(dirty) > 6 else ")"
    ) if dirty else "working tree clean"
    lines.append(f"  git        HEAD {repo['head'] or '(no commit)'}, {tree}")
    lines.append(f"  recorded   in {lineage.lock}")
    families = _families(lineage.links)
    summary = ", ".join(f"{fam} x{len(ls)}" if len(ls) > 1 else fam for fam, ls in families.items())
    raw_names = [r.get("dataset") or r["path"] for r in lineage.raw]
    lines.append(
        f"  chain      {len(lineage.links)} stages: {summary}"
        + (f"; raw data: {', '.join(raw_names)}" if raw_names else "")
    )
    for fam, links in families.items():
        lines += _render_family(fam, links)
    if lineage.raw:
        lines.append("raw data")
        for raw in lineage.raw:
            lines.append("  " + _raw_text(raw))
    if lineage.verified or lineage.problems:
        lines.append("")
        if lineage.problems:
            lines.append(f"verify: {len(lineage.problems)} problem(s)")
            lines += _problem_lines(lineage.problems)
        else:
            lines.append(
                f"verify: ok - {len(lineage.links)} stages, {lineage.hashed_files} files "
                "re-hashed, every output, input, code file and params value matches dvc.lock"
            )
    return "\n".join(lines) + "\n"


def _render_family(fam: str, links: list[Link]) -> list[str]:
    lines = [f"{fam}" + (f"  x{len(links)}" if len(links) > 1 else "")]
    common = {k: v for k, v in links[0].params.items()
              if all(link.params.get(k, MISSING) == v for link in links)}  # fmt: skip
    if common:
        lines.append("  params   " + "  ".join(f"{k}={_value(v)}" for k, v in common.items()))
    versions = {json.dumps(link.code_version, sort_keys=True) for link in links}
    codes = {json.dumps(link.code, sort_keys=True) for link in links}
    shared_code = len(versions) == 1 and len(codes) == 1
    if shared_code and links[0].code:
        lines += _code_lines(links[0], "  ")
    sources = sorted({n for link in links for item in link.inputs for n in item["from"]})
    if len(links) > 1 and sources:
        lines.append(f"  inputs   from {_from_text(sources)}")
    width = max((len(o["path"]) for link in links for o in link.outs), default=0)
    label_width = max(len(link.stage.split("@", 1)[-1]) for link in links)
    for link in links:
        indent = "  "
        if len(links) > 1:  # one line per out, the first one labelled with the run
            own = "".join(
                f"  {k}={_value(v)}" for k, v in link.params.items() if k not in common
            )
            label = link.stage.split("@", 1)[-1]
            if link.problems:
                own += "  !! " + ", ".join(sorted({p["kind"].upper() for p in link.problems}))
            for i, out in enumerate(link.outs):
                first = f"{label:<{label_width}}" if i == 0 else " " * label_width
                lines.append(f"  {first}  {_fmt_entry(out, width)}" + (own if i == 0 else ""))
            indent = "    "
        else:
            for out in link.outs:
                lines.append(f"{indent}out      {_fmt_entry(out, width)}")
            for item in link.inputs:
                src = _from_text(item["from"]) if item["from"] else "-"
                note = ""
                if item.get("read") is not None and item.get("nfiles"):
                    note = f"; read {len(item['read'])} of its {item['nfiles']} files"
                elif item.get("other_files"):
                    note = f"; {len(item['other_files'])} file(s) made by no stage in dvc.lock"
                lines.append(f"{indent}in       {_fmt_entry(item, width)}  <- {src}{note}")
        if not shared_code and link.code:
            lines += _code_lines(link, indent)
        if link.problems and len(links) == 1:
            lines += [f"{indent}!! {p['kind'].upper()} {p['path']}" for p in link.problems]
    return lines


def _problem_lines(problems: list[dict]) -> list[str]:
    """One line per problem; the same problem of many runs of a stage (a changed code
    file) once, with the count."""
    groups: dict[tuple, list[str]] = {}
    for p in problems:
        stage = p["stage"] or "-"
        groups.setdefault((p["kind"], stage.split("@", 1)[0], p["path"], p["detail"]), []).append(
            stage
        )
    lines = []
    for (kind, family, path, detail), names in groups.items():
        who = names[0] if len(names) == 1 else f"{family} x{len(names)}"
        lines.append(f"  {kind.upper():<10} {who}: {path}: {detail}")
    return lines


def _code_lines(link: Link, indent: str) -> list[str]:
    lines = [f"{indent}code     {_code_line(link.code_version)}"]
    lines += [f"{indent}           {c['path']}  {c['md5']}" for c in link.code]
    return lines


def _raw_text(raw: dict) -> str:
    if "dataset" not in raw:  # a .dvc-tracked dep
        return f"{raw['path']}  {raw['md5']}  (tracked by {raw['tracked_by']})"
    text = raw["dataset"]
    if "path" in raw:
        text += f"  {raw['path']}  {raw['md5'] or '(missing)'}"
        notes = []
        if raw.get("package"):
            notes.append(f"{raw['package']} {raw['version']}, installed")
        if raw.get("published_md5"):
            notes.append(f"published md5 {raw['published_md5']}")
        if raw.get("tracked_by"):
            notes.append(f"tracked by {raw['tracked_by']}")
        text += f"  ({'; '.join(notes)})" if notes else ""
    else:
        text += "  (no registered raw source; see pipeline/infra/provenance.py RAW_SOURCES)"
    users = _from_text(raw["used_by"]) if raw["used_by"] else ""
    return text + (f"  read by {users}" if users else "")


# ----------------------------------------------------------------------------- CLI


def main(artifact: str, root: str | Path = ".", verify: bool = False, as_json: bool = False,
         out=None) -> int:  # fmt: skip
    out = out or sys.stdout
    try:
        lineage = trace(artifact, root, verify=verify)
    except LineageError as e:
        print(f"lineage: {e}", file=sys.stderr)
        return 2
    if as_json:
        json.dump(lineage.to_json(), out, indent=2, sort_keys=False, default=str)
        out.write("\n")
    else:
        out.write(render_text(lineage))
    return 1 if lineage.problems else 0
