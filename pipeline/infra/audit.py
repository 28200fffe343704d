"""``python -m pipeline audit <artifact>``: rerun everything upstream of an artifact from a clean
clone of HEAD, and compare each output with the md5 dvc.lock records for it.

``lineage`` says what dvc.lock claims made an artifact; ``audit`` checks the claim by doing it
again. The artifact is resolved exactly as ``lineage`` resolves it (a figure, a metrics file, an
embedding, a checkpoint, a file inside a recorded directory, or a stage name): the chain is
:func:`pipeline.infra.lineage.trace`'s. Then:

1. Refuse (one line, no rerun) on a dirty git tree: the clone holds HEAD, so a result made from
   uncommitted code could not be reproduced from it. Refuse on a stale dvc.lock: ``dvc status``
   names a changed code file, params value or command of a stage of the chain, or the lock
   contradicts itself (a stage recorded as made from an input its producer no longer records).
2. Clone HEAD into a temporary directory (``git clone --shared``: no objects copied), point its
   DVC cache at the original's so tracked raw inputs can be checked out, and run Snakemake
   there with ``--cores N`` and the chain's outputs as targets: the clone holds no data, so
   every stage of the chain runs, scheduled by Snakemake itself.
3. Compare each rerun output with dvc.lock. The original to explain a difference with is the
   workspace file when it still hashes to dvc.lock's md5, else the DVC cache's copy.
   Differences are described by kind: Parquet and CSV by first differing column and its max
   abs difference, checkpoints by first differing tensor, JSON by first differing key, PNG by
   pixels, PDF and anything else by bytes; directories file by file.

Outputs computed without the portable numerics (their ``numerics`` record says ``native`` or a
device, pipeline/infra/numerics.py) cannot be expected to give the same bytes elsewhere, nor can
anything computed from them. For those links the metrics (JSON metrics files, the aggregate's
runs and summary tables) are compared as numbers instead, each against its recorded value with
the recorded spread across seeds as the yardstick; their other outputs are described but not
judged. Every link says which numerics mode made it.

Exit status: 0 every output identical (or, for non-portable links, every metric within its
yardstick); 1 a difference; 2 the artifact cannot be traced; 3 refused: dirty git tree;
4 refused: stale dvc.lock; 5 the rerun failed.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.infra import lineage, numerics, provenance, stage_table

EXIT_OK, EXIT_DIFFERS, EXIT_UNTRACEABLE, EXIT_DIRTY, EXIT_STALE, EXIT_RERUN_FAILED = range(6)

# Metric files judged by numbers on non-portable links: the per-run JSON metrics, the growth
# exponents, and the aggregate's tables of the same metrics (runs, and their seed statistics).
NUMBER_TABLES = (stage_table.RUNS_TABLE, stage_table.SUMMARY_TABLE)
GROUP = ("dataset", "model", "augmentation", "noise_fraction")  # a grid point: seeds vary
# Without a seed spread (one seed, or a metric constant across seeds) a metric must agree to
# this relative tolerance. Measured on the tiny project: one run's geometry computed native
# (AVX-512) and portable differs by 2.2e-16 at most (float64 metrics); the margin leaves room
# for a native run of other kernels upstream, and is far below any effect read off a figure.
FALLBACK_RTOL = 1e-6


class Stop(Exception):
    """The audit cannot go on (a refusal, or a step that failed); ``status``: the exit status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Outcome:
    path: str
    verdict: str  # identical | differs | missing | consistent | not judged
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict in ("differs", "missing")


@dataclass
class LinkResult:
    stage: str
    mode: str  # how dvc.lock's outputs were computed (their numerics records)
    bound: set[str]  # the non-portable modes of these outputs or of any input upstream
    note: str
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def by_numbers(self) -> bool:
        return bool(self.bound)


def _env() -> dict[str, str]:
    """Subprocesses (dvc, snakemake and the stage commands it starts) use this interpreter's
    environment, whatever PATH the caller had."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return os.environ | {"PATH": path}


# ----------------------------------------------------------------------------- refusals


def _refuse_if_stale(project: lineage.Project, links: list[lineage.Link]) -> None:
    """DVC's own ``dvc status`` for code, params and commands; the lock against itself for
    inputs. An output changed on disk is no reason to refuse: the rerun starts from nothing,
    and the originals come from the cache."""
    result = subprocess.run(["dvc", "status", "--json"], cwd=project.root, capture_output=True,
                            text=True, check=False, env=_env())  # fmt: skip
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
                        what, dict) else what  # fmt: skip
                    stale.append(f"{stage}: {path}: {what}")
    produced = {out.path: (stage.name, out.md5) for stage, out in project.outs}
    for link in links:
        for item in link.inputs:
            source = produced.get(item["path"])
            if source is not None and source[1] != item["md5"]:
                stale.append(f"{link.stage}: made from {item['path']} md5 {item['md5']}, but "
                             f"{source[0]} last recorded {source[1]}")  # fmt: skip
    if stale:
        more = f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""
        raise Stop(EXIT_STALE, f"dvc.lock is stale: {stale[0]}{more}; run `dvc repro` "
                      "(or snakemake) and commit first")  # fmt: skip


def _is_data(project: lineage.Project, path: str) -> bool:
    return (project.producer_of(path) is not None or project.dvc_tracked(path) is not None
            or any(lineage._under(out.path, path) for _, out in project.outs))  # fmt: skip


# ----------------------------------------------------------------------------- the rerun


def _clone(project: lineage.Project, dest: Path, raw: list[dict]) -> None:
    git = ["git", "-c", "advice.detachedHead=false"]
    _run([*git, "clone", "--quiet", "--shared", "--no-checkout", str(project.root), str(dest)])
    _run([*git, "checkout", "--quiet", "--detach", project.git.head], cwd=dest)
    cache = lineage._dvc_cache_dir(project.root).resolve()
    _run(["dvc", "config", "--local", "cache.dir", str(cache)], cwd=dest)
    for tracked in sorted({r["tracked_by"] for r in raw if "dataset" not in r}):  # .dvc files
        _run(["dvc", "checkout", "--quiet", tracked], cwd=dest)


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, env=_env())
    if result.returncode != 0:
        raise Stop(EXIT_RERUN_FAILED, f"`{' '.join(cmd)}` failed: {result.stderr.strip()}")


def _rerun(repo: Path, targets: list[str], jobs: int, stages_expected: int) -> float:
    """Snakemake in the clone, its "N of M steps done" lines driving a progress bar.

    ``--configfile`` names params.yaml by its absolute path: the Snakefile then takes it for
    another params file and does not record the run into the clone's dvc.lock (its onsuccess
    `dvc commit` would fail on every output outside the chain, and would store the rerun's
    files in the original's cache). The path reaches the stages only as the source named in
    their error messages; the params values are the same file's."""
    params = repo / stage_table.PARAMS_FILE
    # targets first: --configfile takes every argument after it
    cmd = [sys.executable, "-m", "snakemake", *targets, "--cores", str(jobs),
           "--configfile", str(params)]  # fmt: skip
    log_path = repo / "audit-snakemake.log"
    start = time.monotonic()
    bar = tqdm(total=stages_expected, desc="audit: re-running", unit="stage", file=sys.stderr,
               disable=None)  # no bar when stderr is not a terminal (a log, a test)
    with open(log_path, "w") as log, bar:
        process = subprocess.Popen(cmd, cwd=repo, env=_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)  # fmt: skip
        for line in process.stdout:
            log.write(line)
            if match := re.match(r"(\d+) of (\d+) steps", line):
                bar.total = int(match[2])
                bar.update(int(match[1]) - bar.n)
        process.wait()
    if process.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
        raise Stop(EXIT_RERUN_FAILED, f"the rerun failed (snakemake exit status "
                      f"{process.returncode}; clone kept, log {log_path}):\n{tail}")  # fmt: skip
    return time.monotonic() - start


# ----------------------------------------------------------------------------- originals


class Originals:
    """dvc.lock's version of each output, from the workspace if it still hashes to the
    recorded md5, else from the DVC cache (``files/md5/<2>/<30>``). Each is linked under
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
            source = self.project.manifests.cache / "files" / "md5" / md5[:2] / md5[2:]
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


# ----------------------------------------------------------------------------- comparisons


def describe(original: Path, rerun: Path) -> str:
    """How ``rerun``'s bytes differ from ``original``'s, in the terms of its format."""
    suffix = original.suffix.lower()
    try:
        if suffix in (".parquet", ".csv"):
            return _table_difference(original, rerun)
        if suffix == ".pt":
            return _checkpoint_difference(original, rerun)
        if suffix == ".json":
            return _leaf_difference(json.loads(original.read_text()), json.loads(rerun.read_text()))
        if suffix in (".png", ".pdf"):
            return _figure_difference(original, rerun)
    except Exception as e:  # an unreadable rerun output is itself the difference
        return f"cannot compare as {suffix} ({type(e).__name__}: {e}); " + _bytes_difference(
            original, rerun)
    return _bytes_difference(original, rerun)


def _bytes_difference(a: Path, b: Path) -> str:
    x, y = a.read_bytes(), b.read_bytes()
    first = next((i for i, (u, v) in enumerate(zip(x, y, strict=False)) if u != v),
                 min(len(x), len(y)))  # fmt: skip
    return f"bytes differ from offset {first} ({len(x)} -> {len(y)} bytes)"


def _read_table(path: Path):
    import pyarrow.csv
    import pyarrow.parquet as pq

    return pq.read_table(path) if path.suffix == ".parquet" else pyarrow.csv.read_csv(path)


def _table_difference(a: Path, b: Path) -> str:
    x, y = _read_table(a), _read_table(b)
    if x.column_names != y.column_names:
        return f"columns {x.column_names} -> {y.column_names}"
    if x.num_rows != y.num_rows:
        return f"{x.num_rows} -> {y.num_rows} rows"
    for name in x.column_names:
        if not x[name].equals(y[name]):
            return f"column {name!r}: {_array_difference(x[name], y[name])}"
    meta_x, meta_y = x.schema.metadata or {}, y.schema.metadata or {}
    for key in [*meta_x, *(k for k in meta_y if k not in meta_x)]:
        if meta_x.get(key) != meta_y.get(key):
            return (f"same values; metadata {key.decode()!r}: {_short(meta_x.get(key))} -> "
                    f"{_short(meta_y.get(key))}")  # fmt: skip
    return "same values and metadata; the files' encoding differs"


def _array_difference(a, b) -> str:
    import numpy as np
    import pyarrow as pa

    a, b = a.combine_chunks(), b.combine_chunks()
    while pa.types.is_list(a.type) or pa.types.is_fixed_size_list(a.type) or \
            pa.types.is_large_list(a.type):  # embeddings: one vector per row
        a, b = a.flatten(), b.flatten()
    if a.type != b.type or len(a) != len(b):
        return f"type {a.type} ({len(a)} values) -> {b.type} ({len(b)} values)"
    if pa.types.is_integer(a.type) or pa.types.is_floating(a.type):
        x = a.to_numpy(zero_copy_only=False).astype(np.float64)
        y = b.to_numpy(zero_copy_only=False).astype(np.float64)
        return _numeric_difference(x, y)
    pairs = list(zip(a.to_pylist(), b.to_pylist(), strict=True))
    changed = [i for i, (u, v) in enumerate(pairs) if u != v]
    i = changed[0]
    return f"{len(changed)} of {len(pairs)} values differ, first at row {i}: " \
        f"{pairs[i][0]!r} -> {pairs[i][1]!r}"  # fmt: skip


def _numeric_difference(x, y) -> str:
    import numpy as np

    same_nan = np.isnan(x) & np.isnan(y)
    diff = np.where(same_nan, 0.0, np.abs(x - y))
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN on one side only
    return f"max |diff| {diff.max():.3g} ({int((diff > 0).sum())} of {diff.size} values differ)"


def _checkpoint_difference(a: Path, b: Path) -> str:
    import torch

    x = _flatten(torch.load(a, map_location="cpu", weights_only=True))
    y = _flatten(torch.load(b, map_location="cpu", weights_only=True))
    for key in [*x, *(k for k in y if k not in x)]:
        u, v = x.get(key), y.get(key)
        if isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor):
            if u.shape != v.shape or u.dtype != v.dtype:
                return f"tensor {key!r}: {u.dtype}{list(u.shape)} -> {v.dtype}{list(v.shape)}"
            if not torch.equal(u, v):
                x_np, y_np = u.double().numpy().ravel(), v.double().numpy().ravel()
                return f"tensor {key!r}: {_numeric_difference(x_np, y_np)}"
        elif u != v:
            return f"key {key!r}: {_short(u)} -> {_short(v)}"
    return "same tensors and values; the files' encoding differs"


def _leaf_difference(x: Any, y: Any) -> str:
    x, y = _flatten(x), _flatten(y)
    for key in [*x, *(k for k in y if k not in x)]:
        u, v = x.get(key, "absent"), y.get(key, "absent")
        if u != v:
            size = f" (|diff| {abs(u - v):.3g})" if _is_number(u) and _is_number(v) else ""
            return f"key {key!r}: {_short(u)} -> {_short(v)}{size}"
    return "same keys and values; the files' formatting differs"


def _figure_difference(a: Path, b: Path) -> str:
    record = ""
    try:
        record = _leaf_difference(provenance.read_provenance(a), provenance.read_provenance(b))
        record = "" if record.startswith("same") else f"provenance record {record}"
    except provenance.NoProvenance:
        pass
    if a.suffix.lower() == ".png":
        import numpy as np
        from PIL import Image

        with Image.open(a) as ia, Image.open(b) as ib:
            if ia.size != ib.size:
                return f"image size {ia.size} -> {ib.size}"
            x = np.asarray(ia.convert("RGBA"), np.int16)  # (height, width, 4)
            y = np.asarray(ib.convert("RGBA"), np.int16)
        changed = np.any(x != y, axis=-1)
        if changed.any():
            return (f"{int(changed.sum())} of {changed.size} pixels differ, max channel "
                    f"difference {int(np.abs(x - y).max())}")  # fmt: skip
        return "pixels identical; " + (record or "metadata differs")
    return record or _bytes_difference(a, b)  # PDF: no rasteriser among the dependencies


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in items:
        out |= _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _short(value: Any, width: int = 80) -> str:
    text = value.decode() if isinstance(value, bytes) else repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# ----------------------------------------------------------------------------- by numbers


def numbers_of(path: Path, summary: bool = False) -> dict[str, tuple]:
    """Each number of a metrics file: name -> (value, grid point, metric), the metric being
    the one whose seed spread is its yardstick (in the summary table, ``m_mean`` and ``m_std``
    are both judged by ``m``'s spread)."""
    if path.suffix == ".json":
        doc = json.loads(path.read_text())
        doc.pop(numerics.METADATA_KEY, None)
        point = tuple(doc.get(k) for k in GROUP)
        return {k: (v, point, k) for k, v in _flatten(doc).items() if v is None or _is_number(v)}
    out = {}
    for row in _read_table(path).to_pylist():
        point = tuple(row.get(k) for k in GROUP)
        label = ", ".join(f"{k}={row[k]}" for k in (*GROUP, "seed") if k in row)
        for k, v in row.items():
            if v is None or _is_number(v):
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
            f"(|diff| {abs(now - was):.3g}, {yardstick})")  # fmt: skip
    if unmeasured:
        text += f"; {unmeasured} without a seed spread (one seed, or constant): rel. tolerance"
    return ratio <= 1, text


def _spreads(originals: Originals, lock: dict[str, lineage.LockedStage]):
    """The recorded seed spread: ``<metric>_std`` of the recorded summary table's row of that
    grid point (the aggregate's output, whether or not the audited chain reaches it)."""
    rows: dict[tuple, dict] = {}
    for out in (out for stage in lock.values() for out in stage.outs):
        if out.path == stage_table.SUMMARY_TABLE:
            path = originals.file(out.path, out.md5, count=False)
            if path is not None:
                rows = {tuple(r.get(k) for k in GROUP): r for r in _read_table(path).to_pylist()}

    def spread(metric: str, point: tuple) -> float | None:
        value = (rows.get(point) or {}).get(f"{metric}_std")
        return value if _is_number(value) else None

    return spread


# ----------------------------------------------------------------------------- one link


def _compare_link(link: lineage.Link, repo: Path, originals: Originals, upstream_modes: set,
                  spread) -> LinkResult:  # fmt: skip
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
                  for rel in sorted({*recorded, *produced})]  # fmt: skip
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
        ": bytes compared"  # fmt: skip
    result = LinkResult(link.stage, own, bound, note)
    for path, md5 in files:
        result.outcomes.append(_compare_file(path, md5, found[path], repo / path,
                                             rerun_hasher, result.by_numbers, spread))  # fmt: skip
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
                       "in the workspace nor in the DVC cache)")  # fmt: skip
    detail = describe(original, rerun)
    if not by_numbers:
        return Outcome(path, "differs", detail)
    if path.endswith(".json") or path in NUMBER_TABLES:
        summary = path == stage_table.SUMMARY_TABLE
        ok, text = compare_numbers(numbers_of(original, summary), numbers_of(rerun, summary),
                                   spread)  # fmt: skip
        return Outcome(path, "consistent" if ok else "differs", text)
    return Outcome(path, "not judged", detail)


# ----------------------------------------------------------------------------- CLI


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
          out=None) -> int:  # fmt: skip
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
        if chain.repository["dirty"]:
            dirty = chain.repository["dirty"]
            raise Stop(EXIT_DIRTY, f"the git working tree is dirty ({len(dirty)} paths: "
                          f"{', '.join(dirty[:4])}{', ...' if len(dirty) > 4 else ''}); the "
                          "audit reruns HEAD: commit or stash first")  # fmt: skip
        if chain.lock != lineage.LOCK_FILE:
            raise Stop(EXIT_STALE, f"{artifact} is recorded only in {chain.lock}, not in the "
                          "current dvc.lock: check out that commit to audit it")  # fmt: skip
        links = _upstream_first([link for link in chain.links if link.stage in project.lock])
        if not links:
            print(f"audit: {artifact}: no stage of dvc.lock made it (raw data?)", file=sys.stderr)
            return EXIT_UNTRACEABLE
        _refuse_if_stale(project, links)
        scratch = Path(tempfile.mkdtemp(prefix="pipeline-audit-"))
        repo = scratch / "repo"
        _clone(project, repo, chain.raw)
        targets = sorted({o["path"] for link in links for o in link.outs})
        seconds = _rerun(repo, targets, jobs, len(links))
        originals = Originals(project, scratch / "originals")
        spread = _spreads(originals, project.lock)
        results: list[LinkResult] = []
        bound: dict[str, set[str]] = {}  # stage -> the non-portable modes that reach it
        for link in tqdm(links, desc="audit: comparing", unit="stage", file=sys.stderr,
                         disable=None):  # fmt: skip
            upstream = set().union(*(bound.get(s, set())
                                     for item in link.inputs for s in item["from"]))  # fmt: skip
            results.append(_compare_link(link, repo, originals, upstream, spread))
            bound[link.stage] = results[-1].bound
    except Stop as e:
        keep = keep or e.status == EXIT_RERUN_FAILED  # its log says why
        print(f"audit: refused: {e}" if e.status in (EXIT_DIRTY, EXIT_STALE) else f"audit: {e}",
              file=sys.stderr)  # fmt: skip
        return e.status
    finally:
        if scratch is not None and not keep:
            shutil.rmtree(scratch, ignore_errors=True)
    where = f"{scratch} (kept)" if keep else "a temporary clone (removed)"
    out.write(render(chain, results, seconds, jobs, len(targets), where, originals.sources))
    return EXIT_DIFFERS if any(o.failed for r in results for o in r.outcomes) else EXIT_OK


def render(chain, results: list[LinkResult], seconds: float, jobs: int, n_targets: int,
           where: str, sources: dict[str, int]) -> str:  # fmt: skip
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
                     f"{n_out} outputs of {len(results)} stages")  # fmt: skip
        lines += [f"  {stage}: {o.path}: {o.verdict}: {o.detail}" for stage, o in failed]
    else:
        judged = sum(o.verdict == "consistent" for r in results for o in r.outcomes)
        unjudged = sum(o.verdict == "not judged" for r in results for o in r.outcomes)
        extra = (f" ({judged} compared as numbers, {unjudged} not judged: numerics bound to "
                 "a machine)") if judged or unjudged else ""  # fmt: skip
        lines.append(f"audit: ok - {len(results)} stages, {n_out} outputs, every one "
                     f"reproduces dvc.lock{extra}")  # fmt: skip
    return "\n".join(lines) + "\n"
