"""What lineage reads from DVC agrees with DVC itself: a directory's md5 (with .dvcignore), a
.dvc file's record, the cached manifest, and dvc.lock's schema."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from conftest import sh

from pipeline.infra.lineage import Entry, Hasher, LineageError, parse_lock
from pipeline.infra.lineage.dvc_state import DvcRepo, dir_md5


@pytest.fixture
def added(tmp_path) -> Path:
    """A DVC project with a `dvc add`-ed folder that holds a file .dvcignore names."""
    root = tmp_path / "repo"
    (root / "data/raw/nested").mkdir(parents=True)
    sh("git", "init", "-q", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    (root / ".dvcignore").write_text(".snakemake_timestamp\n")
    (root / "data/raw/a.txt").write_text("a\n")
    (root / "data/raw/a-b.txt").write_text("a-b\n")  # sorts between "a" and "a/..." by bytes
    (root / "data/raw/nested/b.txt").write_text("b\n")
    (root / "data/raw/.snakemake_timestamp").write_text("not data\n")
    sh("dvc", "add", "-q", "data/raw", cwd=root)
    return root


def test_directory_md5_and_dvc_file_are_dvcs_own(added):
    recorded = yaml.safe_load((added / "data/raw.dvc").read_text())["outs"][0]
    repo = DvcRepo(added)
    try:
        (out,) = repo.tracked("data/raw.dvc")
        assert out == Entry("data/raw", recorded["md5"], 3)
        hasher = Hasher(added)
        assert hasher.entry(out) == recorded["md5"]  # the ignored file is left out, as DVC does
        manifest = hasher.manifest("data/raw")
        assert sorted(manifest) == ["a-b.txt", "a.txt", "nested/b.txt"]
        assert repo.cached_manifest(recorded["md5"]) == manifest
        # DVC's documented .dir format: md5 of the JSON list of {md5, relpath}, by relpath
        listing = [{"md5": m, "relpath": r} for r, m in sorted(manifest.items())]
        expected = hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest()
        assert dir_md5(manifest) == expected + ".dir" == recorded["md5"]
        assert repo.cached_manifest("0" * 32 + ".dir") is None  # not in this cache
    finally:
        repo.close()


def test_a_lock_dvc_would_reject_is_an_error_naming_it():
    with pytest.raises(LineageError, match=r"dvc.lock@abc: not a valid DVC lock file .*'cmd'"):
        parse_lock("schema: '2.0'\nstages:\n  prep:\n    outs: []\n", "dvc.lock@abc")
    with pytest.raises(LineageError, match="no 'stages' mapping"):
        parse_lock("- a list\n", "dvc.lock")
    lock = parse_lock(
        "schema: '2.0'\nstages:\n  prep:\n    cmd: sh prep.sh\n    params:\n"
        "      params.yaml:\n        a.b: 1\n      other.yaml:\n        c: 2\n    outs:\n"
        "    - path: out\n      hash: md5\n      md5: 0123.dir\n      size: 9\n      nfiles: 2\n"
    )
    (out,) = lock["prep"].outs
    assert out == Entry("out", "0123.dir", 2) and out.is_dir
    assert lock["prep"].params == {"a.b": 1, "other.yaml:c": 2}


def test_the_lock_is_read_with_yaml_1_2_floats_as_dvc_writes_them():
    """DVC (ruamel.yaml, YAML 1.2) writes 1.0e-6 as 1e-06, which YAML 1.1 reads as a string:
    lineage must read the same numbers DVC does, or a recorded params value looks stale."""
    import yaml
    from ruamel.yaml import YAML

    from pipeline.infra.lineage.dvc_state import _YAML_LOADER

    text = "a: 1e-06\nb: 1.0e-6\nc: -2E+3\nd: 0.1\ne: 12\nf: 1e-06x\ng: '1e-06'\n"
    ours = yaml.load(text, Loader=_YAML_LOADER)
    assert ours == YAML(typ="safe", pure=True).load(text)
    assert ours["a"] == 1e-06 and ours["f"] == "1e-06x" and ours["g"] == "1e-06"
    assert yaml.safe_load(text)["a"] == "1e-06"  # what plain PyYAML would have given
