import numpy as np
import pytest

from pipeline.maths.simplex import regular_simplex, simplex_gram


@pytest.mark.parametrize("k", [2, 3, 5, 10, 100])
@pytest.mark.parametrize("extra", [0, 1, 20])
@pytest.mark.parametrize("radius", [1.0, 0.3, 7.0])
def test_regular_simplex_is_centred_equinorm_equiangular(k, extra, radius):
    h = k - 1 + extra
    v = regular_simplex(k, h, radius)
    assert v.shape == (k, h)
    np.testing.assert_allclose(v.sum(axis=0), 0.0, atol=1e-12 * radius * k)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), radius, rtol=1e-13)
    gram = v @ v.T
    off = gram[~np.eye(k, dtype=bool)]
    np.testing.assert_allclose(off, -(radius**2) / (k - 1), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(gram / radius**2, simplex_gram(k), atol=1e-12)


def test_simplex_needs_k_minus_1_dimensions():
    with pytest.raises(ValueError, match="needs dimension >= 9, got 8"):
        regular_simplex(10, 8)


def test_simplex_needs_two_classes_and_positive_radius():
    with pytest.raises(ValueError, match="at least 2 classes"):
        regular_simplex(1, 3)
    with pytest.raises(ValueError, match="radius must be > 0"):
        regular_simplex(3, 3, 0.0)
