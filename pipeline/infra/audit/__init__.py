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

Modules, in the order the audit uses them: ``rerun`` (steps 1 and 2), ``compare`` (step 3, with
``differences``, which describes a difference by file format), ``cli`` (the command: the steps
in order, and the report).
"""

from pipeline.infra.audit.cli import audit, render
from pipeline.infra.audit.compare import compare_numbers, numbers_of
from pipeline.infra.audit.differences import describe
from pipeline.infra.audit.rerun import (
    EXIT_DIFFERS,
    EXIT_DIRTY,
    EXIT_OK,
    EXIT_RERUN_FAILED,
    EXIT_STALE,
    EXIT_UNTRACEABLE,
    Stop,
)

__all__ = [
    "EXIT_DIFFERS",
    "EXIT_DIRTY",
    "EXIT_OK",
    "EXIT_RERUN_FAILED",
    "EXIT_STALE",
    "EXIT_UNTRACEABLE",
    "Stop",
    "audit",
    "compare_numbers",
    "describe",
    "numbers_of",
    "render",
]
