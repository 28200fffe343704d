"""Golden md5s of the tiny project's artifacts (tests/test_numerics.py checks them).

    python tests/golden.py --update   # after a change meant to alter the bytes

rebuilds the tiny project (every stage, through Snakemake, as tests/tiny_project.py does)
and rewrites tests/golden_tiny.json. Review the diff: a changed md5 that no code change
explains is exactly what the golden test exists to catch.

PNG figures are hashed by their pixels, PDF figures not at all: both embed a provenance
record holding the md5 of every code file of their stage, which changes with any edit of
those files (a comment included) while the drawing stays the same; the PNG's pixels are
what the numbers drew.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

GOLDEN_FILE = Path(__file__).with_name("golden_tiny.json")


def artifact_digests(root: Path) -> dict[str, str]:
    """Relative path -> md5 of every generated file under ``root``/data (PNG: of its RGBA
    pixels); files git tracks there (data/README.md) are not artifacts."""
    import subprocess

    from PIL import Image

    tracked = set(subprocess.run(["git", "ls-files", "data"], cwd=Path(__file__).parents[1],
                                 capture_output=True, text=True, check=True).stdout.split())
    digests = {}
    for path in sorted((root / "data").rglob("*")):
        name = path.relative_to(root).as_posix()
        if not path.is_file() or path.suffix == ".pdf" or name in tracked:
            continue
        if path.suffix == ".png":
            with Image.open(path) as image:
                data = image.convert("RGBA").tobytes()
        else:
            data = path.read_bytes()
        digests[name] = hashlib.md5(data).hexdigest()
    return digests


def settings_in_force() -> dict:
    """What decides the bytes here: the numerics mode and settings, the versions, the CPU."""
    from pipeline.infra import numerics

    return {
        **numerics.record(),
        "environment": {key: os.environ.get(key) for key in numerics.PORTABLE_ENVIRONMENT},
        "cpu": numerics.cpu_model(),
    }


def update() -> None:
    import yaml
    from conftest import copy_project, sh, tiny_params

    with tempfile.TemporaryDirectory() as tmp:
        root = copy_project(Path(tmp))
        (root / "dvc.lock").unlink(missing_ok=True)
        (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
        sh(sys.executable, "-m", "snakemake", "--cores", "2", cwd=root)
        GOLDEN_FILE.write_text(json.dumps(artifact_digests(root), indent=2) + "\n")
    print(f"wrote {GOLDEN_FILE}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(__doc__)
    update()
