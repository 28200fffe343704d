"""A write that runs out of room part-way (here: RLIMIT_FSIZE in a subprocess, which fails
a write past the limit with EFBIG as a full disk fails it with ENOSPC) leaves nothing under
the output's final name, says which output, and a rerun with room gives the same bytes.
For the three kinds of artifact: a Parquet table, a checkpoint and a figure directory."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

LIMIT = 16 * 1024  # bytes: each artifact below is larger

WRITERS = {
    "parquet": """
        import numpy as np, pyarrow as pa
        from pipeline.infra.io import write_parquet
        rng = np.random.default_rng(0)
        write_parquet(pa.table({"x": rng.standard_normal(20000)}), TARGET)
    """,
    "checkpoint": """
        import torch
        from pipeline.stages.train import save_checkpoint
        torch.manual_seed(0)
        save_checkpoint({"weights": torch.randn(64, 128)}, TARGET)
    """,
    "figures": """
        import numpy as np
        from pipeline.infra.io import atomic_dir
        from pipeline.report.plotting import new_figure, save_figure
        with atomic_dir(TARGET) as tmp:
            fig = new_figure(4, 3)
            ax = fig.add_subplot()
            ax.imshow(np.random.default_rng(0).random((64, 64)))
            save_figure(fig, tmp, "noise", dpi=100)
    """,
}
TARGETS = {"parquet": "table.parquet", "checkpoint": "model.pt", "figures": "figures"}


def write(kind: str, target, limit: int | None):
    """Run the writer of ``kind`` in a fresh interpreter, its file size capped at ``limit``."""
    cap = ("" if limit is None else
           f"import resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n")
    code = cap + f"TARGET = {str(target)!r}\n" + textwrap.dedent(WRITERS[kind])
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=False)


def digest(path) -> str:
    if path.is_dir():  # PNG pixels vary with nothing but the drawing; hash every file
        return hashlib.md5(b"".join(p.name.encode() + p.read_bytes()
                                    for p in sorted(path.iterdir()))).hexdigest()
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", list(WRITERS))
def test_a_write_out_of_room_leaves_nothing_and_a_rerun_gives_the_same_bytes(tmp_path, kind):
    reference = tmp_path / "reference" / TARGETS[kind]
    assert write(kind, reference, None).returncode == 0, kind
    target = tmp_path / "out" / TARGETS[kind]
    failed = write(kind, target, LIMIT)
    assert failed.returncode != 0
    last = failed.stderr.strip().splitlines()[-1]  # pyarrow words EFBIG its own way
    assert last.startswith("pipeline.infra.io.OutputError: ")
    assert f"{target}: could not be written (" in last and "File too large" in last
    assert last.endswith("); nothing of it is left under this name")
    assert list(target.parent.iterdir()) == []  # neither the output nor a temporary
    assert write(kind, target, None).returncode == 0
    assert digest(target) == digest(reference)
