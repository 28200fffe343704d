"""DVC remotes: push every artifact, clone the repository afresh, pull, and get a clean
`dvc status` and byte-identical figures. The default remote is a local directory; S3 is
tested against a real S3 server on loopback (moto's), on a port chosen at run time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import sh
from tiny_project import copy_of, git_commit

pytestmark = pytest.mark.e2e

BUCKET = "supcon-geometry"


@pytest.fixture
def private(tmp_path_factory, tmp_path) -> Path:
    return copy_of(tmp_path_factory, tmp_path / "project")


@pytest.fixture
def s3_server(monkeypatch):
    """moto's S3 server on 127.0.0.1; credentials and endpoint only through the environment
    DVC's subprocesses inherit, never written into the repository."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")
    boto3 = pytest.importorskip("boto3")
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask a cloud metadata service
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client
    server.stop()


def tracked_files(root: Path) -> dict[str, bytes]:
    """Every artifact under data/ (what DVC tracks), by path; Snakemake's own markers in
    directory outputs are in .dvcignore, so they are neither pushed nor compared."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted((root / "data").rglob("*"))
        if p.is_file() and p.name not in ("README.md", ".snakemake_timestamp")
    }


def files_under(top: Path) -> set[str]:
    return {p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_file()}


def cached_outputs(root: Path) -> set[str]:
    """The DVC cache's objects (every version of every output), less its run cache."""
    return {p for p in files_under(root / ".dvc/cache") if not p.startswith("runs/")}


def push_clone_pull(root: Path, clone: Path) -> None:
    """Push, commit the remote's config, clone the repository afresh and pull into it."""
    sh("dvc", "push", "-q", cwd=root)
    status = json.loads(sh("dvc", "status", "--cloud", "--json", cwd=root).stdout)
    assert status == {}, status  # every artifact of every stage is on the remote
    git_commit(root, "configure the DVC remote")
    sh("git", "clone", "-q", str(root), str(clone), cwd=root.parent)
    assert not (clone / "data/figures").exists()
    sh("dvc", "pull", "-q", cwd=clone)
    assert json.loads(sh("dvc", "status", "--json", cwd=clone).stdout) == {}
    original = tracked_files(root)
    figures = [p for p in original if p.startswith("data/figures/") and p.endswith(".png")]
    assert len(figures) == 5
    pulled = tracked_files(clone)
    for path in figures:
        assert pulled[path] == original[path], path
    assert pulled == original  # and every other artifact


def test_local_directory_remote_round_trip(private, tmp_path):
    remote = tmp_path / "remote"
    sh("dvc", "remote", "add", "--default", "local", str(remote), cwd=private)
    push_clone_pull(private, tmp_path / "clone")
    assert files_under(remote) == cached_outputs(private)


def test_s3_remote_round_trip(private, tmp_path, s3_server):
    endpoint, client = s3_server
    sh("dvc", "remote", "add", "--default", "s3", f"s3://{BUCKET}/dvc", cwd=private)
    sh("dvc", "remote", "modify", "s3", "endpointurl", endpoint, cwd=private)
    push_clone_pull(private, tmp_path / "clone")
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET)["Contents"]}
    # Every output DVC tracks is an object in the bucket: figures, models, the lot.
    assert {key.removeprefix("dvc/") for key in keys} == cached_outputs(private)
    assert os.environ["AWS_ACCESS_KEY_ID"] not in (private / ".dvc/config").read_text()
