"""Which Python versions every pin of requirements.lock has wheels for.

For each version, pip resolves every pinned requirement as a binary wheel for that
interpreter and this platform (manylinux x86-64), without installing or downloading the
wheels (``pip install --dry-run --only-binary=:all: --python-version X --no-deps``: the
wheels' metadata only); a pin with no wheel for that version is named. Needs the package
index (the network), so it is a script, not a test: run it when the lock or the supported
versions change, and keep ``requires-python`` in pyproject.toml and the Makefile's
interpreter search within what it prints.

    python tools/resolvable_pythons.py [--lock requirements.lock] [VERSION ...]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ("3.11", "3.12", "3.13")
TESTED = "3.11"  # the version the test suite and the golden md5s run on


def pins(lock: Path) -> list[str]:
    """The ``name==version`` lines of the lock (comments and blank lines dropped)."""
    lines = [line.split("#", 1)[0].strip() for line in lock.read_text().splitlines()]
    return [line for line in lines if line]


def _resolve(version: str, requirements: list[str], target: Path):
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps",
         "--only-binary=:all:", "--python-version", version, "--target", str(target),
         *requirements],
        capture_output=True, text=True, check=False)


def unresolvable(version: str, requirements: list[str]) -> dict[str, str]:
    """Pin -> pip's reason, for each pin pip finds no wheel for under Python ``version``.
    All pins in one resolution; pip names the first it cannot find, which is set aside and
    the rest resolved again, until they resolve (one pip run per missing pin, plus one)."""
    missing: dict[str, str] = {}
    left = list(requirements)
    with tempfile.TemporaryDirectory() as tmp:
        while left:
            result = _resolve(version, left, Path(tmp) / "target")
            if result.returncode == 0:
                break
            named = re.search(r"No matching distribution found for (\S+)", result.stderr)
            if named is None or named.group(1) not in left:
                raise SystemExit(f"pip failed for python {version} without naming a pin:\n"
                                 f"{result.stderr.strip()[-2000:]}")
            reason = re.search(r"ERROR: (Could not find .*)", result.stderr)
            missing[named.group(1)] = reason.group(1) if reason else "no wheel"
            left.remove(named.group(1))
    return missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument("versions", nargs="*", default=list(VERSIONS))
    args = parser.parse_args()
    requirements = pins(args.lock)
    print(f"{len(requirements)} pins of {args.lock.name}, binary wheels for manylinux x86-64")
    # The tested version installs the lock (make install), so a pin without a wheel there
    # is a source-only release pip builds at install (pure Python ones build on any
    # version): reported, and only the other versions' further misses count.
    baseline = unresolvable(TESTED, requirements)
    print(f"python {TESTED} (tested): "
          + (f"{len(baseline)} pin(s) source-only, built at install: " + ", ".join(baseline)
             if baseline else "every pin has a wheel"))
    failed = False
    for version in (v for v in args.versions if v != TESTED):
        missing = {r: why for r, why in unresolvable(version, requirements).items()
                   if r not in baseline}
        failed |= bool(missing)
        print(f"python {version}: " + (
            "every other pin has a wheel" if not missing else
            f"{len(missing)} pin(s) without a wheel: "
            + "; ".join(f"{r} ({why})" for r, why in missing.items())))
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
