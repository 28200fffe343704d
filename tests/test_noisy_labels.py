import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.infra import datasets, schemas
from pipeline.stages.noisy_labels import corrupt_labels, make_noisy_labels

FRACTIONS = [0.0, 0.1, 0.2, 0.25, 0.3, 1 / 3, 0.5, 0.7, 0.9, 0.99, 1.0]


@pytest.mark.parametrize("n", [1, 7, 10, 1258])
@pytest.mark.parametrize("p", FRACTIONS)
def test_flip_changes_exactly_floor_pn_labels(n, p):
    k = 10
    labels = np.arange(n) % k
    noisy = corrupt_labels(labels, k, p, "flip", seed=3)
    # floor(p N) with the float product snapped first: 0.3 * 10 is 2.9999999999999996.
    expected = math.floor(round(p * n, 9))
    assert (noisy != labels).sum() == expected
    assert noisy.min() >= 0 and noisy.max() < k


def test_flip_floor_is_exact_at_float_edges():
    labels = np.zeros(10, dtype=np.int64)
    assert (corrupt_labels(labels, 2, 0.3, "flip", 0) != labels).sum() == 3
    assert (corrupt_labels(labels, 2, 0.7, "flip", 0) != labels).sum() == 7


def test_flip_targets_are_uniform_over_other_classes():
    k, n = 4, 40_000
    labels = np.zeros(n, dtype=np.int64)
    noisy = corrupt_labels(labels, k, 1.0, "flip", seed=0)
    counts = np.bincount(noisy, minlength=k)
    assert counts[0] == 0
    # each of the 3 other classes gets n/3; 5 sigma of a binomial(n, 1/3)
    assert np.all(np.abs(counts[1:] - n / 3) < 5 * np.sqrt(n * (1 / 3) * (2 / 3)))


@pytest.mark.parametrize("p", FRACTIONS)
def test_uniform_redraws_floor_pn_labels_from_all_classes(p):
    k, n = 10, 5000
    labels = np.arange(n) % k
    noisy = corrupt_labels(labels, k, p, "uniform", seed=1)
    chosen = math.floor(round(p * n, 9))
    changed = (noisy != labels).sum()
    assert changed <= chosen
    # a redrawn label keeps its value with probability 1/K
    if chosen:
        assert abs(changed - chosen * (k - 1) / k) < 5 * np.sqrt(chosen * 0.1 * 0.9) + 1


def test_same_seed_same_labels_other_seed_other_labels():
    labels = np.arange(1000) % 10
    a = corrupt_labels(labels, 10, 0.4, "flip", seed=7)
    assert np.array_equal(a, corrupt_labels(labels, 10, 0.4, "flip", seed=7))
    assert not np.array_equal(a, corrupt_labels(labels, 10, 0.4, "flip", seed=8))


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_out_of_range_fraction_is_named(bad):
    with pytest.raises(ValueError, match=str(bad)):
        corrupt_labels(np.zeros(3, dtype=np.int64), 2, bad, "flip", 0)


def test_stage_writes_labels_file(tmp_path, params):
    out = tmp_path / "labels.parquet"
    make_noisy_labels(params, dataset="digits", imbalance_ratio=1, noise_fraction=0.5, seed=0,
                      labels=out)
    table = pq.read_table(out)
    assert table.schema.remove_metadata().equals(schemas.LABELS)
    data = datasets.load("digits", params["datasets"]["digits"])
    assert table.num_rows == data.train.labels.shape[0] == 1258
    assert np.array_equal(table["clean_label"].to_numpy(), data.train.labels)
    flipped = table["flipped"].to_numpy()
    assert flipped.sum() == 629
    assert np.array_equal(flipped, table["noisy_label"].to_numpy() != data.train.labels)
    before = out.read_bytes()
    make_noisy_labels(params, dataset="digits", imbalance_ratio=1, noise_fraction=0.5, seed=0,
                      labels=out)
    assert out.read_bytes() == before


def test_digits_split_is_fixed_stratified_and_disjoint(params):
    data = datasets.load("digits", params["datasets"]["digits"])
    assert data.train.images.shape == (1258, 1, 8, 8) and data.test.images.shape == (539, 1, 8, 8)
    assert data.train.images.dtype == np.uint8 and data.train.images.max() == 16
    # every class held out at the same share, +-1 sample of rounding
    share = np.bincount(data.test.labels) / (
        np.bincount(data.test.labels) + np.bincount(data.train.labels)
    )
    assert np.all(np.abs(share - 0.3) < 0.01)
    again = datasets.load("digits", params["datasets"]["digits"])
    assert np.array_equal(again.test.images, data.test.images)


def test_digits_are_scikit_learns_digits(params):
    from sklearn.datasets import load_digits

    reference = load_digits()
    data = datasets.load("digits", params["datasets"]["digits"])
    images = np.concatenate([data.train.images, data.test.images]).reshape(-1, 64)
    labels = np.concatenate([data.train.labels, data.test.labels])
    order = np.lexsort(np.column_stack([images, labels]).T)
    ref = np.column_stack([reference.data.astype(np.int64), reference.target])
    mine = np.column_stack([images, labels])[order]
    np.testing.assert_array_equal(mine, ref[np.lexsort(ref.T)])
