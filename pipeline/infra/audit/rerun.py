"""The audit's first steps (pipeline.infra.audit): refuse what cannot be reproduced from HEAD,
then rerun the chain in a clean clone of it.

Every step that cannot go on raises :class:`Stop` with the audit's exit status.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from pipeline.infra import lineage, stage_table

# The exit statuses of `python -m pipeline audit` (pipeline.infra.audit lists their meaning).
EXIT_OK, EXIT_DIFFERS, EXIT_UNTRACEABLE, EXIT_DIRTY, EXIT_STALE, EXIT_RERUN_FAILED = range(6)


class Stop(Exception):
    """The audit cannot go on (a refusal, or a step that failed); ``status``: the exit status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _env() -> dict[str, str]:
    """Subprocesses (dvc, snakemake and the stage commands it starts) use this interpreter's
    environment, whatever PATH the caller had."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return os.environ | {"PATH": path}


# ----------------------------------------------------------------------------- refusals


def refuse_if_stale(project: lineage.Project, links: list[lineage.Link]) -> None:
    """DVC's own ``dvc status`` for code, params and commands; the lock against itself for
    inputs. An output changed on disk is no reason to refuse: the rerun starts from nothing,
    and the originals come from the cache."""
    result = subprocess.run(["dvc", "status", "--json"], cwd=project.root, capture_output=True,
                            text=True, check=False, env=_env())
    if result.returncode != 0:
        raise Stop(EXIT_STALE, f"`dvc status` failed: {result.stderr.strip()}")
    names = {link.stage for link in links}
    stale = []
    for stage, changes in json.loads(result.stdout or "{}").items():
        for change in changes if stage in names else []:
            if isinstance(change, str):  # "changed command", "always changed"
                stale.append(f"{stage}: {change}")
                continue
            for path, what in (change.get("changed deps") or {}).items():
                if not _is_data(project, path):  # a code file, or params.yaml: {key: change}
                    what = ", ".join(f"{k} {v}" for k, v in what.items()) if isinstance(
                        what, dict) else what
                    stale.append(f"{stage}: {path}: {what}")
    produced = {out.path: (stage.name, out.md5) for stage, out in project.outs}
    for link in links:
        for item in link.inputs:
            source = produced.get(item["path"])
            if source is not None and source[1] != item["md5"]:
                stale.append(f"{link.stage}: made from {item['path']} md5 {item['md5']}, but "
                             f"{source[0]} last recorded {source[1]}")
    if stale:
        more = f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""
        raise Stop(EXIT_STALE, f"dvc.lock is stale: {stale[0]}{more}; run `dvc repro` "
                      "(or snakemake) and commit first")


def _is_data(project: lineage.Project, path: str) -> bool:
    return (project.producer_of(path) is not None or project.dvc_tracked(path) is not None
            or any(lineage.under(out.path, path) for _, out in project.outs))


# ----------------------------------------------------------------------------- the rerun


def clone_head(project: lineage.Project, dest: Path, raw: list[dict]) -> None:
    """HEAD of ``project`` at ``dest``, sharing its git objects and its DVC cache, with the
    ``raw`` inputs tracked by .dvc files checked out."""
    git = ["git", "-c", "advice.detachedHead=false"]
    _run([*git, "clone", "--quiet", "--shared", "--no-checkout", str(project.root), str(dest)])
    _run([*git, "checkout", "--quiet", "--detach", project.git.head], cwd=dest)
    cache = lineage.cache_dir(project.root).resolve()
    _run(["dvc", "config", "--local", "cache.dir", str(cache)], cwd=dest)
    for tracked in sorted({r["tracked_by"] for r in raw if "dataset" not in r}):  # .dvc files
        _run(["dvc", "checkout", "--quiet", tracked], cwd=dest)


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, env=_env())
    if result.returncode != 0:
        raise Stop(EXIT_RERUN_FAILED, f"`{' '.join(cmd)}` failed: {result.stderr.strip()}")


def run_snakemake(repo: Path, targets: list[str], jobs: int, stages_expected: int) -> float:
    """Snakemake in the clone, its "N of M steps done" lines driving a progress bar.

    ``--configfile`` names params.yaml by its absolute path: the Snakefile then takes it for
    another params file and does not record the run into the clone's dvc.lock (its onsuccess
    `dvc commit` would fail on every output outside the chain, and would store the rerun's
    files in the original's cache). The path reaches the stages only as the source named in
    their error messages; the params values are the same file's."""
    params = repo / stage_table.PARAMS_FILE
    # targets first: --configfile takes every argument after it
    cmd = [sys.executable, "-m", "snakemake", *targets, "--cores", str(jobs),
           "--configfile", str(params)]
    log_path = repo / "audit-snakemake.log"
    start = time.monotonic()
    bar = tqdm(total=stages_expected, desc="audit: re-running", unit="stage", file=sys.stderr,
               disable=None)  # no bar when stderr is not a terminal (a log, a test)
    with open(log_path, "w") as log, bar:
        process = subprocess.Popen(cmd, cwd=repo, env=_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            log.write(line)
            if match := re.match(r"(\d+) of (\d+) steps", line):
                bar.total = int(match[2])
                bar.update(int(match[1]) - bar.n)
        process.wait()
    if process.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
        raise Stop(EXIT_RERUN_FAILED, f"the rerun failed (snakemake exit status "
                      f"{process.returncode}; clone kept, log {log_path}):\n{tail}")
    return time.monotonic() - start
