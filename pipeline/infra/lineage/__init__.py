"""``python -m pipeline lineage <artifact>``: the chain of stages that made an artifact, back
to the raw data, read from dvc.lock; ``--verify`` re-hashes every link.

An artifact is any file DVC records (a figure, a metrics file, an embedding, a checkpoint, a
file inside a directory output), a stage name (``train@digits-ce-0.0-0``), or a PNG/PDF
figure outside the repository: figures carry a provenance record (pipeline/infra/provenance.py)
whose input md5s are looked up in dvc.lock, or in an older committed dvc.lock.

Each link is one stage of dvc.lock with its outputs (path, md5), the params values it was
made with, its code files (md5) and the git commit holding that code (a dirty working tree
is flagged), and the inputs it read with the stages that produced them. ``--verify`` names
each problem (missing, tampered, stale, provenance) and exits 1 if there is any.

One concern per module, in the order a trace uses them:

- ``dvc_state``: what is read from DVC (dvc.lock, md5s of files and directories, the cache,
  .dvc files), through DVC's own code wherever DVC has it;
- ``git``: the git commits holding the code md5s dvc.lock records (DVC has no such query);
- ``project``: the lookups of a trace over one dvc.lock, and the chain's records;
- ``trace``: the walk from the artifact upstream, and the figure's own provenance;
- ``verify``: ``--verify``;
- ``render``: the text printout (``--json`` prints :meth:`Lineage.to_json`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.infra.lineage.dvc_state import (
    LOCK_FILE,
    Entry,
    Hasher,
    LineageError,
    LockedStage,
    cache_dir,
    parse_lock,
    under,
)
from pipeline.infra.lineage.project import Lineage, Link, Project
from pipeline.infra.lineage.render import render_text
from pipeline.infra.lineage.trace import PROVENANCE_STAGE, trace

__all__ = [
    "LOCK_FILE",
    "PROVENANCE_STAGE",
    "Entry",
    "Hasher",
    "Lineage",
    "LineageError",
    "Link",
    "LockedStage",
    "Project",
    "cache_dir",
    "main",
    "parse_lock",
    "render_text",
    "trace",
    "under",
]


def main(artifact: str, root: str | Path = ".", verify: bool = False, as_json: bool = False,
         out=None) -> int:
    """The CLI: print the lineage (text or JSON); 0 if verified or not asked, 1 if a problem
    was found, 2 if the artifact cannot be traced."""
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
