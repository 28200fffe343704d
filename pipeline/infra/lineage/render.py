"""The text printout of a lineage: a header, then one block per stage family (the params,
code and inputs its runs share, then a line per run), the raw data, and the verify result."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from pipeline.infra.lineage.project import Lineage, Link
from pipeline.infra.nested import MISSING


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
              if all(link.params.get(k, MISSING) == v for link in links)}
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
