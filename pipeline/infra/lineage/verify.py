"""``--verify``: re-hash every file of every link and name each problem.

- ``missing``: an output recorded in dvc.lock is not on disk;
- ``tampered``: an output's bytes differ from dvc.lock (edited after its stage ran), or a
  raw file differs from its record (.dvc file, or the figure's provenance);
- ``stale``: the stage would rerun: a code file, a params value or an input differs from what
  dvc.lock records for it, or its recorded input is not what the upstream stage produced;
- ``provenance``: the figure's embedded record disagrees with dvc.lock.

Why not ``dvc status``: it takes 5.3 s on the default grid here (it loads every stage, see
dvc_state.py), it compares dvc.yaml as it is now rather than the chain dvc.lock recorded,
and it says "modified" where this names the file, the md5s and the params key.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from pipeline.infra import stage_table
from pipeline.infra.config import ParamsError, digest, lookup
from pipeline.infra.lineage.dvc_state import Entry
from pipeline.infra.lineage.project import Lineage, Link, Project
from pipeline.infra.nested import MISSING, differences


def verify(project: Project, lineage: Lineage) -> None:
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
        _check_params(link, params_now, problems)
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


def _problem(problems: list, link: Link | None, kind: str, path: str, detail: str) -> None:
    item = {"stage": link.stage if link else None, "kind": kind, "path": path, "detail": detail}
    problems.append(item)
    if link is not None:
        link.problems.append(item)


def _current_params(root: Path) -> dict | None:
    try:
        return yaml.safe_load((root / stage_table.PARAMS_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None


def _check_params(link: Link, params_now: dict | None, problems: list) -> None:
    """Each recorded params value against params.yaml now, leaf by leaf."""
    for key, value in link.params.items():
        try:  # a key of another params file ("file:key") is not followed
            now = lookup(params_now, key) if params_now is not None and ":" not in key else MISSING
        except ParamsError:
            now = MISSING
        if now is MISSING:
            _problem(problems, link, "stale", stage_table.PARAMS_FILE,
                     f"params key {key!r} is no longer in {stage_table.PARAMS_FILE}")
            continue
        for sub, was, is_ in differences(value, now, key) if now != value else []:
            _problem(problems, link, "stale", stage_table.PARAMS_FILE,
                     f"params {sub} = {_show(is_)} (recorded {_show(was)})")


def _show(value) -> str:
    return "absent" if value is MISSING else json.dumps(value)


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
