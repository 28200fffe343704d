"""The walk: from an artifact upstream through dvc.lock's deps, to the raw data.

Each link is one stage of dvc.lock with its outputs (path, md5), the params values it was
made with, its code files (md5) and the git commit holding that code, and the inputs it read
with the stages that produced them. A dep is another stage's output (followed), a file
tracked by a ``.dvc`` file (raw data: the end of the chain), or a source file (the stage's
code). Stages that declare ``datasets.<name>`` params read that dataset's raw file directly
(for digits, the copy shipped in scikit-learn); it ends the chain too.
"""

from __future__ import annotations

import importlib.metadata
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.infra import provenance, stage_table
from pipeline.infra.config import digest
from pipeline.infra.io import file_md5
from pipeline.infra.lineage.dvc_state import LOCK_FILE, LineageError, LockedStage, parse_lock, under
from pipeline.infra.lineage.project import Lineage, Link, Project
from pipeline.infra.lineage.verify import verify as verify_chain

DATASET_PARAM = "datasets."  # a stage reading `datasets.<name>` reads that raw dataset
PROVENANCE_STAGE = " (from the embedded provenance)"  # suffix of a link read from a figure


def trace(artifact: str, root: str | Path = ".", verify: bool = False) -> Lineage:
    """The lineage of ``artifact`` in the project at ``root``; ``verify`` re-hashes it."""
    project = Project(Path(root))
    try:
        return _trace(project, artifact, verify)
    finally:
        project.close()


def _trace(project: Project, artifact: str, verify: bool) -> Lineage:
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
        art["md5_on_disk"] = file_md5(path)
    lineage = Lineage(
        artifact=art,
        repository={"root": str(project.root), "head": project.git.head,
                    "dirty": project.git.dirty},
        lock=project.lock_source,
        provenance=record,
        links=[],
        raw=[],
    )
    _walk(project, lineage, start, only)
    if rel is not None and "tracked_by" in art:
        lineage.raw.append({"path": rel, "md5": art["md5"], "tracked_by": art["tracked_by"],
                            "used_by": []})
    if verify:
        verify_chain(project, lineage)
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
    for lock, source in _locks(project):
        trial = Project(project.root, lock, source, like=project)
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


def _locks(project: Project):
    """(stages, source) of the working tree's dvc.lock, then of each committed one, newest
    first, each parsed only if the ones before did not hold the figure's inputs."""
    yield project.lock, project.lock_source
    for commit, text in project.git.lock_versions():
        try:
            lock = parse_lock(text, f"{LOCK_FILE}@{commit}")
        except LineageError:
            continue  # not a lock DVC reads: it cannot have recorded the figure's inputs
        yield lock, f"{LOCK_FILE} at commit {commit}"


def grid_reads(stage: LockedStage) -> dict[str, set[str]]:
    """dep path -> the per-run files a grid-wide stage of the table reads from that folder,
    found as the stage finds them (``run_file`` of its ``GridDir`` patterns over
    ``grid_jobs`` of the grid recorded for it), so a run outside the grid, though on disk,
    is not in its lineage."""
    spec = stage_table.BY_NAME.get(stage.family)
    grid = stage.params.get("grid")
    if spec is None or not isinstance(grid, dict):
        return {}
    try:
        jobs = stage_table.grid_jobs(stage_table.GEOMETRY, grid)
    except (KeyError, TypeError):  # a grid of an older params schema
        return {}
    return {
        dep.path: {stage_table.run_file(pattern, dep.path, **job).as_posix()
                   for pattern in dep.patterns for job in jobs}
        for dep in spec.deps.values()
        if isinstance(dep, stage_table.GridDir)
    }


def _walk(project: Project, lineage: Lineage, start, figure_inputs: set[str] | None) -> None:
    """Breadth-first upstream from the ``start`` stages (names or LockedStage).

    ``figure_inputs``: the files the artifact (a figure) was drawn from, by its provenance;
    the first stage's other data deps are not followed."""
    from_record = lineage.artifact.get("stage", "").endswith(PROVENANCE_STAGE)
    queue = [(project.lock[s] if isinstance(s, str) else s, 1 if from_record else 0)
             for s in start]
    if from_record:
        lineage.links.append(_provenance_link(lineage))
    seen = {stage.name for stage, _ in queue}
    raw_users: dict[str, list[str]] = defaultdict(list)
    raw_files: dict[str, dict] = {}
    while queue:
        stage, depth = queue.pop(0)
        reads = grid_reads(stage)
        code, inputs = [], []
        for dep in stage.deps:
            read = reads.get(dep.path)
            if depth == 0 and figure_inputs is not None:
                read = {p for p in figure_inputs if under(p, dep.path)}
                if not read and (project.producer_of(dep.path)
                                 or project.has_produced_members(dep.path)):
                    continue  # a data input of the stage this figure was not drawn from
            producers, other = project.producers(dep, read)
            if read is not None and not read and producers == []:
                if project.producer_of(dep.path) or project.has_produced_members(dep.path):
                    continue  # a data input this figure was not drawn from
            tracked = None if producers else project.dvc_tracked(dep.path)
            if producers:
                item = {"path": dep.path, "md5": dep.md5, "nfiles": dep.nfiles,
                        "from": sorted({s.name for s, _ in producers}), "other_files": other,
                        "read": None if read is None else sorted(read)}
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
        item: dict[str, Any] = {"dataset": name, "used_by": users}
        item |= _raw_dataset(project, name, project.lock[users[0]].params.get(DATASET_PARAM + name))
        if name in recorded:
            item["recorded_md5"] = recorded[name]["md5"]
        lineage.raw.append(item)


def _raw_dataset(project: Project, name: str, params: dict | None) -> dict[str, Any]:
    """Where dataset ``name``'s raw file is now, its md5, and what vouches for it: the
    package shipping it, its published checksum, a .dvc file tracking it."""
    source = provenance.RAW_SOURCES.get(name)
    current = provenance.raw_record(name, params, project.root)
    if source is None or current is None:
        return {}
    item = dict(current)
    if source.package is not None:
        item |= {"package": source.package, "version": _version_of(source.package)}
    published = source.published_md5(params or {})
    if published is not None:
        item["published_md5"] = published
    tracked = project.dvc_tracked(current["path"])
    if tracked is not None:
        item |= {"tracked_by": tracked[0], "recorded_md5": tracked[1].md5}
    return item


def _datasets(params: dict[str, Any]) -> list[str]:
    return sorted(k[len(DATASET_PARAM) :] for k in params if k.startswith(DATASET_PARAM))


def _version_of(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


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
                for p, m in sorted(record["inputs"].items())],
        datasets=sorted(record.get("raw", {})),
    )


def _entry_dict(entry) -> dict:
    out = {"path": entry.path, "md5": entry.md5}
    if entry.nfiles is not None:
        out["nfiles"] = entry.nfiles
    return out
