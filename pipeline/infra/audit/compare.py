"""Each rerun output against dvc.lock's md5 (pipeline.infra.audit): bytes on a link
computed with the portable numerics, numbers (against the recorded seed spread) on one that
was not; the original to describe a difference with comes from the workspace or the DVC cache.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.infra import lineage, numerics, provenance, stage_table
from pipeline.infra.audit.differences import describe, flatten, is_number, read_table
from pipeline.infra.runs import COLUMNS

# Metric files judged by numbers on non-portable links: the per-run JSON metrics, the growth
# exponents, and the aggregate's tables of the same metrics (runs, and their seed statistics).
NUMBER_TABLES = (stage_table.RUNS_TABLE, stage_table.SUMMARY_TABLE)
GROUP = tuple(c for c in COLUMNS if c != "seed")  # a grid point: seeds vary
# Without a seed spread (one seed, or a metric constant across seeds) a metric must agree to
# this relative tolerance. Measured on the tiny project: one run's geometry computed native
# (AVX-512) and portable differs by 2.2e-16 at most (float64 metrics); the margin leaves room
# for a native run of other kernels upstream, and is far below any effect read off a figure.
FALLBACK_RTOL = 1e-6


@dataclass
class Outcome:
    """The verdict on one output file."""

    path: str
    verdict: str  # identical | differs | missing | consistent | not judged
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict in ("differs", "missing")


@dataclass
class LinkResult:
    """The verdicts on the outputs of one stage of the chain; ``note`` says how they were
    computed (their numerics records) and so how they were compared."""

    stage: str
    bound: set[str]  # the non-portable modes of these outputs or of any input upstream
    note: str
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def by_numbers(self) -> bool:
        return bool(self.bound)


# ----------------------------------------------------------------------------- originals


class Originals:
    """dvc.lock's version of each output, from the workspace if it still hashes to the
    recorded md5, else from the DVC cache (where DVC's API says it keeps it). Each is linked under
    ``where`` by its project path, so readers that go by suffix can open it."""

    def __init__(self, project: lineage.Project, where: Path):
        self.project, self.where = project, where
        self.sources: dict[str, int] = {"workspace": 0, "DVC cache": 0}

    def file(self, path: str, md5: str | None, count: bool = True) -> Path | None:
        if md5 is None:
            return None
        if self.project.hasher.file(path) == md5:
            source, kind = self.project.root / path, "workspace"
        else:
            kind = "DVC cache"
            source = self.project.manifests.cached_file(md5)
            if not source.is_file():
                return None
        self.sources[kind] += count
        link = self.where / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(source)
        return link

    def manifest(self, out: lineage.Entry) -> dict[str, str] | None:
        return self.project.manifests.get(out.md5, out.path)


# ----------------------------------------------------------------------------- by numbers


def numbers_of(path: Path, summary: bool = False) -> dict[str, tuple]:
    """Each number of a metrics file: name -> (value, grid point, metric), the metric being
    the one whose seed spread is its yardstick (in the summary table, ``m_mean`` and ``m_std``
    are both judged by ``m``'s spread)."""
    if path.suffix == ".json":
        doc = json.loads(path.read_text())
        doc.pop(numerics.METADATA_KEY, None)
        point = tuple(doc.get(k) for k in GROUP)
        return {k: (v, point, k) for k, v in flatten(doc).items() if v is None or is_number(v)}
    out = {}
    for row in read_table(path).to_pylist():
        point = tuple(row.get(k) for k in GROUP)
        label = ", ".join(f"{k}={row[k]}" for k in (*GROUP, "seed") if k in row)
        for k, v in row.items():
            if v is None or is_number(v):
                metric = re.sub(r"_(mean|std)$", "", k) if summary else k
                out[f"{k} [{label}]"] = (v, point, metric)
    return out


def compare_numbers(recorded: dict, rerun: dict, spread) -> tuple[bool, str]:
    """``recorded``/``rerun``: :func:`numbers_of`; ``spread(metric, grid point)``: the
    recorded spread across seeds of that metric there, or None. True if every number agrees
    within its yardstick; the text names the worst one."""
    worst, unmeasured = None, 0
    for name, (was, point, metric) in recorded.items():
        now = rerun.get(name, (None,))[0]
        if was is None or now is None or (math.isnan(was) and math.isnan(now)):
            if (was is None) != (now is None):
                return False, f"{name}: {was} -> {now}"
            continue
        s = spread(metric, point)
        if s is None or not math.isfinite(s) or s == 0:
            s, unmeasured = None, unmeasured + 1
        tolerance = s if s is not None else FALLBACK_RTOL * max(abs(was), abs(now))
        ratio = abs(now - was) / tolerance if tolerance else (0.0 if now == was else math.inf)
        if worst is None or ratio > worst[0]:
            worst = (ratio, name, was, now, s)
    if worst is None:
        return True, "no numbers"
    ratio, name, was, now, s = worst
    yardstick = f"seed spread {s:.3g}" if s is not None else f"rel. tolerance {FALLBACK_RTOL:g}"
    text = (f"{len(recorded)} numbers; worst {name}: {was:.6g} -> {now:.6g} "
            f"(|diff| {abs(now - was):.3g}, {yardstick})")
    if unmeasured:
        text += f"; {unmeasured} without a seed spread (one seed, or constant): rel. tolerance"
    return ratio <= 1, text


def seed_spreads(originals: Originals, lock: dict[str, lineage.LockedStage]):
    """The recorded seed spread: ``<metric>_std`` of the recorded summary table's row of that
    grid point (the aggregate's output, whether or not the audited chain reaches it)."""
    rows: dict[tuple, dict] = {}
    for out in (out for stage in lock.values() for out in stage.outs):
        if out.path == stage_table.SUMMARY_TABLE:
            path = originals.file(out.path, out.md5, count=False)
            if path is not None:
                rows = {tuple(r.get(k) for k in GROUP): r for r in read_table(path).to_pylist()}

    def spread(metric: str, point: tuple) -> float | None:
        value = (rows.get(point) or {}).get(f"{metric}_std")
        return value if is_number(value) else None

    return spread


# ----------------------------------------------------------------------------- one link


def compare_link(link: lineage.Link, repo: Path, originals: Originals, upstream_modes: set,
                 spread) -> LinkResult:
    """Every file of ``link``'s outputs (each file of a directory output) as the rerun in
    ``repo`` made it, against dvc.lock; ``upstream_modes``: the non-portable numerics modes
    of its inputs' producers."""
    rerun_hasher = lineage.Hasher(repo)
    files: list[tuple[str, str | None]] = []  # (path, recorded md5) of every file of the link
    for out in link.outs:
        entry = lineage.Entry(out["path"], out["md5"], out.get("nfiles"))
        if not entry.is_dir:
            files.append((entry.path, entry.md5))
            continue
        recorded = originals.manifest(entry) or {}
        produced = rerun_hasher.manifest(entry.path) or {}
        files += [(f"{entry.path}/{rel}", recorded.get(rel))
                  for rel in sorted({*recorded, *produced})]
    found = {path: originals.file(path, md5) for path, md5 in files}
    records = [r for r in map(provenance.numerics_record, filter(None, found.values())) if r]
    own = "+".join(sorted({r.get("mode", "?") for r in records})) or "unrecorded"
    bound_here = [r for r in records if not numerics.bytes_portable(r)]
    bound = upstream_modes | {r.get("mode", "?") for r in bound_here}
    note = f"numerics {own}"
    if bound_here:
        machine = bound_here[0].get("cpu") or bound_here[0].get("device")
        note += f" on {machine}" if machine else ""
    elif bound:
        note += f", from inputs computed {'+'.join(sorted(bound))}"
    note += ": metrics compared as numbers, other outputs not judged" if bound else \
        ": bytes compared"
    result = LinkResult(link.stage, bound, note)
    for path, md5 in files:
        result.outcomes.append(_compare_file(path, md5, found[path], repo / path,
                                             rerun_hasher, result.by_numbers, spread))
    return result


def _compare_file(path, md5, original, rerun: Path, hasher, by_numbers, spread) -> Outcome:
    if not rerun.is_file():
        return Outcome(path, "missing", "recorded in dvc.lock, not produced by the rerun")
    if md5 is None:
        return Outcome(path, "differs", "produced by the rerun, not recorded in dvc.lock")
    now = hasher.file(path)
    if now == md5:
        return Outcome(path, "identical")
    if original is None:
        return Outcome(path, "differs", f"md5 {now}, dvc.lock {md5} (the original is neither "
                       "in the workspace nor in the DVC cache)")
    detail = describe(original, rerun)
    if not by_numbers:
        return Outcome(path, "differs", detail)
    if path.endswith(".json") or path in NUMBER_TABLES:
        summary = path == stage_table.SUMMARY_TABLE
        ok, text = compare_numbers(numbers_of(original, summary), numbers_of(rerun, summary),
                                   spread)
        return Outcome(path, "consistent" if ok else "differs", text)
    return Outcome(path, "not judged", detail)
