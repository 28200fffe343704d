"""Golden md5s of two tiny projects' artifacts: the digits one (tests/tiny_project.py;
tests/test_numerics.py checks it) and the mnist5k subsample (tests/test_mnist5k.py).

    python tests/golden.py --update   # after a change meant to alter the bytes

rebuilds both (every stage, through Snakemake) and rewrites tests/golden_<name>.json.
Review the diff: a changed md5 that no code change explains is exactly what the golden
tests exist to catch.

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

GOLDEN_FILES = {name: Path(__file__).with_name(f"golden_{name}.json")
                for name in ("tiny", "mnist5k")}


def project_params(name: str) -> dict:
    """The params of golden project ``name``: conftest.tiny_params, on mnist5k at 20
    images a class (140 train, 60 test) for "mnist5k"."""
    from conftest import tiny_params

    params = tiny_params()
    if name == "mnist5k":
        params["grid"]["datasets"] = ["mnist5k"]
        params["datasets"]["mnist5k"]["samples_per_class"] = 20
    return params


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


def check(name: str, root: Path) -> None:
    """Fail, naming every artifact, both md5s and the settings in force, where the project
    at ``root`` differs from golden project ``name``."""
    expected = json.loads(GOLDEN_FILES[name].read_text())
    actual = artifact_digests(root)
    problems = [
        f"{path}: expected md5 {expected.get(path)}, got {actual.get(path)}"
        for path in sorted(set(expected) | set(actual))
        if expected.get(path) != actual.get(path)
    ]
    assert not problems, (
        f"{len(problems)} artifact(s) differ from tests/{GOLDEN_FILES[name].name} under the "
        f"settings {settings_in_force()}:\n" + "\n".join(problems)
        + "\nIf a code change meant to change these bytes: python tests/golden.py --update"
    )


def update() -> None:
    import yaml
    from conftest import copy_project, sh

    for name, golden in GOLDEN_FILES.items():
        with tempfile.TemporaryDirectory() as tmp:
            root = copy_project(Path(tmp))
            (root / "dvc.lock").unlink(missing_ok=True)
            (root / "params.yaml").write_text(yaml.safe_dump(project_params(name),
                                                             sort_keys=False))
            sh(sys.executable, "-m", "snakemake", "--cores", "2", cwd=root)
            golden.write_text(json.dumps(artifact_digests(root), indent=2) + "\n")
        print(f"wrote {golden}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(__doc__)
    update()
