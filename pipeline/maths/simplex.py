"""The regular simplex, built exactly (no iterative repulsion).

K points on the sphere of radius rho in R^h (h >= K-1) with sum 0, equal norms rho and
pairwise inner products -rho^2/(K-1): the optimum geometry of both losses (docs/paper.md).
"""

from __future__ import annotations

import numpy as np


def regular_simplex(num_classes: int, dim: int, radius: float = 1.0) -> np.ndarray:
    """Vertices as rows of a (K, h) float64 array.

    Construction: the centred basis vectors e_k - 1/K span the (K-1)-dim subspace
    orthogonal to the all-ones vector; the Helmert matrix gives an orthonormal basis of it
    in closed form, so the coordinates are exact up to float rounding.
    """
    k = num_classes
    if k < 2:
        raise ValueError(f"a regular simplex needs at least 2 classes, got {k}")
    if dim < k - 1:
        raise ValueError(
            f"a regular simplex of {k} classes needs dimension >= {k - 1}, got {dim}"
        )
    if not radius > 0:
        raise ValueError(f"simplex radius must be > 0, got {radius}")
    # Helmert rows j = 1..K-1: (1, ..., 1, -j, 0, ..., 0) / sqrt(j (j+1)), orthonormal and
    # orthogonal to the ones vector; H^T H = I - 11^T / K.
    helmert = np.zeros((k - 1, k))
    for j in range(1, k):
        helmert[j - 1, :j] = 1.0
        helmert[j - 1, j] = -j
        helmert[j - 1] /= np.sqrt(j * (j + 1))
    # Column k of H has norm sqrt((K-1)/K); rescale to radius rho.
    vertices = helmert.T * (radius * np.sqrt(k / (k - 1)))  # (K, K-1)
    out = np.zeros((k, dim))
    out[:, : k - 1] = vertices
    return out


def simplex_gram(num_classes: int) -> np.ndarray:
    """G* = K/(K-1) I - 1/(K-1) 11^T: the Gram matrix of the unit-radius simplex."""
    k = num_classes
    return k / (k - 1) * np.eye(k) - np.ones((k, k)) / (k - 1)
