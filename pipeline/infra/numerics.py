"""Portable CPU numerics: the same bytes from every stage on any x86-64 CPU with AVX2.

The numeric libraries pick their kernels by the CPU they find, and kernels of different
vector widths sum in different orders, so the same run gives other bytes on another machine
(measured here, digits supcon, 600 steps: the checkpoint md5 changes between PyTorch's
AVX-512 and AVX2 kernels). Each library has a switch that fixes its choice; this module sets
them all, in one place, before numpy or torch is first imported: ``pipeline/__init__.py``
calls :func:`configure`, and every stage runs as ``python -m pipeline ...`` (Snakemake and
DVC alike), so no user ever exports anything.

``PIPELINE_NUMERICS`` chooses the mode:
- ``portable`` (default): the settings of :data:`PORTABLE_ENVIRONMENT`; the bytes are
  those of any x86-64 CPU with AVX2 and FMA (Intel Haswell, AMD Zen and newer) running
  these pinned versions.
- ``native``: each library picks its fastest kernels; bytes are bound to this machine, and
  every output says so (:func:`record`), as do ``lineage`` and ``audit``.
A CUDA run is bound to its GPU model and versions whatever the mode (:func:`note_device`).

This module imports only the standard library: it must run before numpy and torch.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

MODE_VARIABLE = "PIPELINE_NUMERICS"
MODES = ("portable", "native")

# Each setting fixes one library's choice of kernels. Measured cost of the whole set on this
# machine's CPU (AMD EPYC, AVX-512) by benchmarks/bench_numerics.py; the README quotes it.
PORTABLE_ENVIRONMENT: dict[str, str] = {
    # PyTorch's own vectorised kernels: the AVX2 build of each, which every AVX2 CPU runs
    # (an AVX-512 CPU would otherwise take the AVX-512 ones, which reduce in other orders).
    # "default" (no vector ISA) is also portable but costs ~25% more per training step.
    "ATEN_CPU_CAPABILITY": "avx2",
    # MKL (PyTorch's CPU BLAS): conditional numerical reproducibility (CNR) on its COMPATIBLE
    # code branch (SSE2). Intel's oneMKL guide ("Getting Started with CNR"): a branch such as
    # AVX2 gives the same results only on Intel CPUs with AVX2; "on non-Intel CPUs ... the
    # AUTO branch is used instead". COMPATIBLE is the branch for every x86-64 vendor. STRICT:
    # bitwise-reproducible BLAS level-3 results whatever else varies (Intel's strict CNR).
    "MKL_CBWR": "COMPATIBLE,STRICT",
    # numpy's own SIMD dispatch (sums, exp/log loops): no wider than x86-64-v3 (AVX2, FMA).
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    # numpy's and scipy's bundled OpenBLAS pick a kernel per CPU model: fix the Haswell ones.
    "OPENBLAS_CORETYPE": "Haswell",
    # One thread everywhere: partial sums then never depend on the core count.
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}

# cuBLAS needs a fixed workspace to be deterministic (PyTorch's reproducibility notes); it
# must be set before the first CUDA call, and costs a few MiB of GPU memory: always set.
CUDA_ENVIRONMENT: dict[str, str] = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}

METADATA_KEY = "numerics"  # the key under which every output records how it was computed


class NumericsError(ValueError):
    """PIPELINE_NUMERICS holds an unknown mode."""


_state = {"configured_before_import": False, "device": None}


def mode() -> str:
    value = os.environ.get(MODE_VARIABLE, "portable").strip().lower() or "portable"
    if value not in MODES:
        raise NumericsError(
            f"environment variable {MODE_VARIABLE}: expected one of {', '.join(MODES)}, "
            f"got {value!r}"
        )
    return value


def configure() -> None:
    """Apply the mode's settings to this process (and so to the stage jobs it starts).

    Portable settings are forced, not defaulted: a stray ``MKL_CBWR`` in a user's shell
    would otherwise change the bytes. They only take effect if numpy and torch are not
    loaded yet; :func:`record` says ``native`` for a process where they were.
    """
    for key, value in CUDA_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    try:
        chosen = mode()
    except NumericsError:
        return  # reported by the CLI before any stage runs (pipeline/__main__.py)
    if chosen == "portable":
        os.environ.update(PORTABLE_ENVIRONMENT)
        _state["configured_before_import"] = not ({"numpy", "torch"} & set(sys.modules))


def configure_torch(torch) -> None:
    """Settings that exist only as torch calls; stages call this after importing torch.

    oneDNN (convolutions on the CPU) sizes its blocks by the CPU's caches, so its sums depend
    on the machine: in portable mode convolutions take PyTorch's own im2col + BLAS path.
    """
    torch.set_num_threads(1)
    if is_portable():
        torch.backends.mkldnn.enabled = False


def configure_device(torch, device, deterministic: bool) -> None:
    """On CUDA: deterministic kernels when asked (``train.common.deterministic``), and the
    outputs marked as bound to this GPU model and these versions. A no-op on the CPU.

    Deterministic means the same bytes for the same GPU model, driver, CUDA and PyTorch
    versions (PyTorch's reproducibility notes): ``use_deterministic_algorithms`` makes
    ``index_add_`` (the supcon loss's class sums) take its deterministic path and raises on
    any op that has none; cuDNN may not autotune; cuBLAS uses the fixed workspace set above.
    """
    if device.type != "cuda":
        return
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    note_device("cuda", torch.cuda.get_device_name(device), deterministic)


def is_portable() -> bool:
    return mode() == "portable" and _state["configured_before_import"]


def note_device(device_type: str, name: str | None = None, deterministic: bool = False) -> None:
    """Called when a stage computes on an accelerator: its outputs are bound to that device."""
    if device_type != "cpu":
        _state["device"] = {"type": device_type, "name": name, "deterministic": deterministic}


def record() -> dict:
    """How this process computes, as stored in each output's metadata (JSON-able)."""
    import importlib.metadata as md

    versions = {}
    for package in ("torch", "numpy"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    if _state["device"] is not None:
        return {"mode": _state["device"]["type"], "device": _state["device"]["name"],
                "deterministic": _state["device"]["deterministic"], **versions}
    if is_portable():
        return {"mode": "portable", **versions}
    return {"mode": "native", "machine": platform.machine(), "cpu": cpu_model(), **versions}


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def bytes_portable(rec: dict | None) -> bool:
    """Whether an output with this record has the same bytes on every supported CPU."""
    return rec is not None and rec.get("mode") == "portable"
