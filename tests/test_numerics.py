"""Portable numerics (pipeline/infra/numerics.py): the same bytes whatever vector ISA the CPU
offers.

(a) A short training run, its embeddings and geometry are computed twice through the real CLI:
once as this machine is, once as a machine without AVX-512 would compute (MKL, oneDNN and
glibc capped to AVX2 from the outside; PyTorch, numpy and OpenBLAS are pinned by the portable
settings themselves). Every output must be byte-identical. The same pair in native mode must
differ where the machine has AVX-512: proof that the comparison can fail.
(b) Golden md5s: every artifact of the tiny project (tests/tiny_project.py, all stages) has
the md5 committed in tests/golden_tiny.json (`python tests/golden.py --update` rewrites it).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import golden
import pytest
import yaml
from conftest import ROOT, sh, tiny_params
from tiny_project import built

from pipeline.infra import numerics

# What a CPU without AVX-512 would let each library use (its documented caps).
AVX2_MACHINE = {
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F,-AVX512DQ,-AVX512BW,-AVX512VL,-AVX512CD",
}
OUTPUTS = ("labels.parquet", "model.pt", "log.parquet", "embeddings.parquet", "head.parquet",
           "metrics.json", "cosines.parquet")


def has_avx512() -> bool:
    try:
        return " avx512f " in f" {Path('/proc/cpuinfo').read_text()} ".replace("\n", " ")
    except OSError:
        return False


def run_chain(out: Path, params: Path, env: dict[str, str], model: str = "supcon",
              last: str = "geometry") -> dict[str, str]:
    """noisy_labels -> train -> embed -> geometry (up to ``last``) through the CLI; the md5
    of every output written."""
    out.mkdir(parents=True)
    run = ["--dataset", "digits", "--imbalance-ratio", "1", "--noise-fraction", "0.3",
           "--seed", "0"]
    full = [*run[:4], "--model", model, "--augmentation", "none", "--temperature", "0.1",
            "--batch-size", "64", "--iterations", "200", *run[4:]]
    py = [sys.executable, "-m", "pipeline"]
    full_env = {**os.environ, **env}
    for stage, args in (
        ("noisy_labels", [*run, "--labels", out / "labels.parquet"]),
        ("train", [*full, "--labels", out / "labels.parquet", "--checkpoint", out / "model.pt",
                   "--train-log", out / "log.parquet"]),
        ("embed", [*full, "--labels", out / "labels.parquet", "--checkpoint", out / "model.pt",
                   "--embeddings", out / "embeddings.parquet", "--head", out / "head.parquet"]),
        ("geometry", [*full, "--embeddings", out / "embeddings.parquet", "--head",
                      out / "head.parquet", "--train-log", out / "log.parquet",
                      "--metrics", out / "metrics.json", "--cosines", out / "cosines.parquet"]),
    ):
        sh(*py, stage, "--params", params, *args, cwd=ROOT, env=full_env)
        if stage == last:
            break
    return {name: hashlib.md5((out / name).read_bytes()).hexdigest()
            for name in OUTPUTS if (out / name).exists()}


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("numerics") / "params.yaml"
    p = tiny_params()
    p["grid"]["iterations"] = [200]  # enough steps to drift apart
    p["train"]["common"].update(eval_every=50)
    path.write_text(yaml.safe_dump(p))
    return path


@pytest.mark.e2e  # runs stages as subprocesses: not in the fast tier
def test_portable_bytes_equal_under_two_isa_levels(tmp_path, params_file):
    env = {numerics.MODE_VARIABLE: "portable"}
    here = run_chain(tmp_path / "here", params_file, env)
    avx2 = run_chain(tmp_path / "avx2", params_file, {**env, **AVX2_MACHINE})
    assert set(here) == set(OUTPUTS)
    differing = {k: (here[k], avx2[k]) for k in OUTPUTS if here[k] != avx2[k]}
    assert not differing, f"portable outputs differ between ISA levels: {differing}"
    from pipeline.infra.provenance import numerics_record

    for name in ("labels.parquet", "model.pt", "log.parquet", "metrics.json"):
        assert numerics_record(tmp_path / "here" / name)["mode"] == "portable", name


@pytest.mark.e2e
@pytest.mark.skipif(not has_avx512(), reason="this CPU has no AVX-512: one ISA level only")
def test_native_bytes_differ_between_isa_levels(tmp_path, params_file):
    """Without the portable settings the same comparison fails: the test above has teeth."""
    from pipeline.infra.provenance import numerics_record

    env = {numerics.MODE_VARIABLE: "native"}
    here = run_chain(tmp_path / "here", params_file, {**env, "ATEN_CPU_CAPABILITY": "avx512"},
                     last="train")
    avx2 = run_chain(tmp_path / "avx2", params_file, {**env, "ATEN_CPU_CAPABILITY": "avx2",
                                                       **AVX2_MACHINE}, last="train")
    assert here["model.pt"] != avx2["model.pt"]
    record = numerics_record(tmp_path / "here" / "model.pt")
    assert record["mode"] == "native" and record["machine"] == "x86_64"


def test_unknown_mode_is_a_named_error(tmp_path, params_file):
    result = sh(sys.executable, "-m", "pipeline", "noisy_labels", "--params", params_file,
                "--dataset", "digits", "--imbalance-ratio", "1", "--noise-fraction", "0.3",
                "--seed", "0", "--labels", tmp_path / "labels.parquet", cwd=ROOT, check=False,
                env={**os.environ, numerics.MODE_VARIABLE: "fast"})
    assert result.returncode != 0
    assert "PIPELINE_NUMERICS: expected one of portable, native, got 'fast'" in result.stderr
    assert not (tmp_path / "labels.parquet").exists()


@pytest.mark.e2e  # runs stages as subprocesses: not in the fast tier
def test_every_artifact_of_the_tiny_project_has_its_golden_md5(tmp_path_factory):
    golden.check("tiny", built(tmp_path_factory))
