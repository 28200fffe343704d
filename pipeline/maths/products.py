"""Matrix and inner products whose float64 CPU bytes are the same on every x86-64 vendor.

MKL's float64 BLAS (DGEMM, DDOT) gives other bytes on an AMD CPU than on an Intel one, and
no switch fixes it: oneMKL's reproducibility branches (``MKL_CBWR``, set by
pipeline/infra/numerics.py) act on Intel CPUs only ("on non-Intel CPUs ... the AUTO branch is
used instead", Intel's CNR guide). Measured: the free-features table, the one float64 torch
stage, differed between an Intel Xeon and an AMD EPYC with the same code, while every
float32 artifact agreed. So float64 products on the CPU are written here as ATen's own
elementwise products and sum reductions, whose kernels ``ATEN_CPU_CAPABILITY=avx2`` fixes on
every CPU; tests/test_free_features.py runs the stage under ``MKL_VERBOSE=1`` and finds no
BLAS call. float32 and accelerator tensors keep ``torch.mm``: their bytes are unchanged.

The sums are O(m n k) like a product, without BLAS's blocking: fine for the free features'
matrices (at most a few hundred rows and tens of columns), not meant for training sizes.
"""

from __future__ import annotations

import torch

# Rows of ``a`` per chunk of :func:`matmul`'s (rows, k, n) intermediate: at most about this many
# float64 numbers (32 MiB) are held at once, whatever the shapes.
_CHUNK_ELEMENTS = 1 << 22


def _blas_free(t: torch.Tensor) -> bool:
    return t.dtype == torch.float64 and t.device.type == "cpu"


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for (m, k) @ (k, n) -> (m, n), differentiable like it.

    float64 on the CPU: each entry is ``(a_i * b_j).sum()`` over k, one ATen reduction over a
    contiguous last axis (so its order is the reduction kernel's, the same on every CPU).
    """
    if not _blas_free(a):
        return a @ b
    m, k = a.shape
    if b.shape[0] != k:
        raise ValueError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} do not chain")
    columns = b.T.contiguous()  # (n, k): row j is column j of b, contiguous along k
    rows = max(1, _CHUNK_ELEMENTS // max(1, k * columns.shape[0]))
    parts = [
        (a[lo : lo + rows, None, :] * columns[None, :, :]).sum(dim=2)  # (r, n, k) -> (r, n)
        for lo in range(0, m, rows)
    ]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The inner product of two tensors of one shape, as a 0-d tensor (``torch.vdot`` of
    the flattened real tensors; float64 on the CPU as one ATen sum, no DDOT)."""
    if not _blas_free(a):
        return torch.vdot(a.flatten(), b.flatten())
    return (a * b).sum()
