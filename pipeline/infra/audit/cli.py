"""``python -m pipeline audit <artifact>``: the audit's steps in order, and its report
(pipeline.infra.audit).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from pipeline.infra import lineage
from pipeline.infra.audit.compare import LinkResult, Originals, compare_link, seed_spreads
from pipeline.infra.audit.rerun import (
    EXIT_DIFFERS,
    EXIT_DIRTY,
    EXIT_OK,
    EXIT_RERUN_FAILED,
    EXIT_STALE,
    EXIT_UNTRACEABLE,
    Stop,
    clone_head,
    refuse_if_stale,
    run_snakemake,
)


def _upstream_first(links: list[lineage.Link]) -> list[lineage.Link]:
    """The links in an order they can run in (lineage's is breadth first from the artifact,
    where a shortcut, aggregate -> train logs, puts train before embed): by the longest path
    from the raw data. The first difference listed is then a cause, the later ones its
    consequences."""
    by_name = {link.stage: link for link in links}
    level: dict[str, int] = {}

    def depth(name: str) -> int:
        if name not in level:
            producers = {s for item in by_name[name].inputs for s in item["from"] if s in by_name}
            level[name] = 1 + max(map(depth, producers), default=-1)
        return level[name]

    return sorted(links, key=lambda link: depth(link.stage))  # stable: lineage's order within


def audit(artifact: str, root: str | Path = ".", jobs: int = 1, keep: bool = False,
          out=None) -> int:
    """Audit ``artifact`` of the project at ``root`` (Snakemake with ``jobs`` cores; ``keep``:
    keep the clone); the report goes to ``out``, errors to stderr. Returns the exit status."""
    out = out or sys.stdout
    if jobs < 1:
        print(f"audit: --jobs must be >= 1, got {jobs}", file=sys.stderr)
        return EXIT_UNTRACEABLE
    try:
        chain = lineage.trace(artifact, root)
    except lineage.LineageError as e:
        print(f"audit: {e}", file=sys.stderr)
        return EXIT_UNTRACEABLE
    scratch = None
    try:
        project = lineage.Project(Path(chain.repository["root"]))
        dirty = chain.repository["dirty"]
        if dirty:
            raise Stop(EXIT_DIRTY, f"the git working tree is dirty ({len(dirty)} paths: "
                          f"{', '.join(dirty[:4])}{', ...' if len(dirty) > 4 else ''}); the "
                          "audit reruns HEAD: commit or stash first")
        if chain.lock != lineage.LOCK_FILE:
            raise Stop(EXIT_STALE, f"{artifact} is recorded only in {chain.lock}, not in the "
                          "current dvc.lock: check out that commit to audit it")
        links = _upstream_first([link for link in chain.links if link.stage in project.lock])
        if not links:
            print(f"audit: {artifact}: no stage of dvc.lock made it (raw data?)", file=sys.stderr)
            return EXIT_UNTRACEABLE
        refuse_if_stale(project, links)
        scratch = Path(tempfile.mkdtemp(prefix="pipeline-audit-"))
        repo = scratch / "repo"
        clone_head(project, repo, chain.raw)
        targets = sorted({o["path"] for link in links for o in link.outs})
        seconds = run_snakemake(repo, targets, jobs, len(links))
        originals = Originals(project, scratch / "originals")
        spread = seed_spreads(originals, project.lock)
        results: list[LinkResult] = []
        bound: dict[str, set[str]] = {}  # stage -> the non-portable modes that reach it
        for link in tqdm(links, desc="audit: comparing", unit="stage", file=sys.stderr,
                         disable=None):
            upstream = set().union(*(bound.get(s, set())
                                     for item in link.inputs for s in item["from"]))
            results.append(compare_link(link, repo, originals, upstream, spread))
            bound[link.stage] = results[-1].bound
    except Stop as e:
        keep = keep or e.status == EXIT_RERUN_FAILED  # its log says why
        print(f"audit: refused: {e}" if e.status in (EXIT_DIRTY, EXIT_STALE) else f"audit: {e}",
              file=sys.stderr)
        return e.status
    finally:
        if scratch is not None and not keep:
            shutil.rmtree(scratch, ignore_errors=True)
    where = f"{scratch} (kept)" if keep else "a temporary clone (removed)"
    out.write(render(chain, results, seconds, jobs, len(targets), where, originals.sources))
    return EXIT_DIFFERS if any(o.failed for r in results for o in r.outcomes) else EXIT_OK


def render(chain, results: list[LinkResult], seconds: float, jobs: int, n_targets: int,
           where: str, sources: dict[str, int]) -> str:
    """The report: the rerun, each link's outputs and verdicts, the differences at the end."""
    head = chain.repository["head"]
    lines = [
        f"audit of {chain.artifact['argument']}",
        f"  git        HEAD {head[:12]}, working tree clean; dvc.lock up to date (dvc status)",
        f"  rerun      {len(results)} stages in {where}: snakemake --cores {jobs}, "
        f"{n_targets} targets, {seconds:.1f} s",
        "  originals  " + ", ".join(f"{n} from the {k}" for k, n in sources.items()),
        "",
    ]
    width = max(len(o.verdict) for r in results for o in r.outcomes)
    for r in results:
        lines.append(f"{r.stage}  ({r.note})")
        for o in r.outcomes:
            verdict = o.verdict.upper() if o.failed else o.verdict
            lines.append(f"  {verdict:<{width}}  {o.path}" + (f"  {o.detail}" if o.detail else ""))
    failed = [(r.stage, o) for r in results for o in r.outcomes if o.failed]
    n_out = sum(len(r.outcomes) for r in results)
    lines.append("")
    if failed:
        stages_hit = len({s for s, _ in failed})
        lines.append(f"audit: {len(failed)} difference(s) in {stages_hit} stage(s), of "
                     f"{n_out} outputs of {len(results)} stages")
        lines += [f"  {stage}: {o.path}: {o.verdict}: {o.detail}" for stage, o in failed]
    else:
        judged = sum(o.verdict == "consistent" for r in results for o in r.outcomes)
        unjudged = sum(o.verdict == "not judged" for r in results for o in r.outcomes)
        extra = (f" ({judged} compared as numbers, {unjudged} not judged: numerics bound to "
                 "a machine)") if judged or unjudged else ""
        lines.append(f"audit: ok - {len(results)} stages, {n_out} outputs, every one "
                     f"reproduces dvc.lock{extra}")
    return "\n".join(lines) + "\n"
