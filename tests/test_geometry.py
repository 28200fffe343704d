"""pipeline.stages.geometry against closed forms (regular simplex, orthogonal and coincident means,
a hand-computed noisy-label case) and against naive loops on random data."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.infra import inputs, io, numerics, schemas
from pipeline.infra.runs import Run
from pipeline.maths import metrics
from pipeline.maths.simplex import regular_simplex, simplex_gram
from pipeline.stages import geometry

PROBE = {"inverse_regularisation": 1.0, "max_iterations": 1000}  # as params.yaml


def _no_nan(token):
    raise AssertionError(f"metrics.json contains {token}")


def write_run(
    tmp_path,
    *,
    train_z,
    train_noisy,
    train_clean=None,
    test_z=None,
    test_labels=None,
    head=None,
    model="ce_fixed",
    num_classes=None,
    accuracies=(0.5, 1.0, 1.0),
    name="run",
    checkpoint_md5="c" * 32,
):
    """Write embeddings, head and training log of a synthetic run; return their paths. Their
    metadata say what embed and train would: made from a checkpoint of md5 ``checkpoint_md5``
    (the log: written beside it)."""
    train_z = np.asarray(train_z, dtype=np.float64)
    n, h = train_z.shape
    train_noisy = np.asarray(train_noisy)
    train_clean = train_noisy if train_clean is None else np.asarray(train_clean)
    test_z = np.zeros((0, h)) if test_z is None else np.asarray(test_z, dtype=np.float64)
    test_labels = np.zeros(0, dtype=np.int64) if test_labels is None else np.asarray(test_labels)
    k = num_classes if num_classes is not None else int(train_noisy.max()) + 1
    m = test_z.shape[0]
    z = np.concatenate([train_z, test_z]).astype(np.float32)
    table = pa.table(
        {
            "index": np.concatenate([np.arange(n), np.arange(m)]).astype(np.int64),
            "split": ["train"] * n + ["test"] * m,
            "clean_label": np.concatenate([train_clean, test_labels]).astype(np.int64),
            "noisy_label": pa.array(
                [int(v) for v in train_noisy] + [None] * m, pa.int64()
            ),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(z.ravel()), h),
        },
        schema=schemas.embeddings(h),
    )
    cfg = {
        "dataset": "synthetic",
        "augmentation": "none",
        "temperature": 0.1,
        "batch_size": 256,
        "iterations": 3000,
        "noise_fraction": 0.0,
        "seed": 7,
        "model": {"model": model, "num_classes": k, "representation_dim": h},
    }
    d = tmp_path / name
    paths = {
        "embeddings": d / "embeddings.parquet",
        "head": d / "head.parquet",
        "train_log": d / "train_log.parquet",
    }
    made_from = {inputs.KEY: {"checkpoint": checkpoint_md5, "labels": "1" * 32}}
    io.write_parquet(table, paths["embeddings"], metadata={"train_config": cfg, **made_from})
    w = np.zeros((0, h)) if head is None else np.asarray(head, dtype=np.float32)
    head_table = pa.table(
        {
            "class": np.arange(w.shape[0], dtype=np.int64),
            "weight": pa.FixedSizeListArray.from_arrays(pa.array(w.ravel(), pa.float32()), h),
        },
        schema=schemas.head(h),
    )
    io.write_parquet(head_table, paths["head"], metadata={"train_config": cfg, **made_from})
    rows = [
        {
            "iteration": 100 * (i + 1),
            "learning_rate": 0.1,
            "loss": 2.0 / (i + 1),
            "supcon_loss": 3.0 / (i + 1),
            "supcon_optimum": 1.0,
            "supcon_gap": 3.0 / (i + 1) - 1.0,
            "loss_gap": 0.5 / (i + 1),
            "train_accuracy_noisy": a,
            "train_accuracy_clean": a,
            "test_accuracy_class_mean": a,
            "test_accuracy_head": None,
        }
        for i, a in enumerate(accuracies)
    ]
    io.write_parquet(pa.Table.from_pylist(rows, schema=schemas.TRAIN_LOG), paths["train_log"],
                     metadata={"train_config": cfg, inputs.KEY: {"labels": "1" * 32},
                               "written_with": {"checkpoint": checkpoint_md5}})
    return paths


def identity(paths) -> dict:
    """The run (the stage's wildcards) that the embeddings' metadata names, as the stage's
    ``run`` argument."""
    cfg = io.read_metadata(paths["embeddings"])["train_config"]
    return {"run": Run.of_train_config(cfg)}


def run_stage(tmp_path, paths, threshold=1.0, name="out", batch_size=geometry.BATCH_SIZE):
    out = {"metrics": tmp_path / name / "metrics.json", "cosines": tmp_path / name / "cos.pq"}
    returned = geometry.measure_geometry(
        {"geometry": {"fit_threshold": threshold, "probe": PROBE}},
        **identity(paths), **paths, **out, batch_size=batch_size,
    )
    metrics = json.loads(out["metrics"].read_text(), parse_constant=_no_nan)
    assert metrics.pop(numerics.METADATA_KEY)["mode"] in ("portable", "native")  # how made
    assert metrics == returned
    # made from exactly these three files
    assert metrics.pop(inputs.KEY) == {role: io.file_md5(paths[role])
                                       for role in ("embeddings", "head", "train_log")}
    cosines = pq.read_table(out["cosines"]).to_pandas()
    return metrics, cosines


def simplex_run(k, h, rho=2.0, per_class=3):
    """Training and test samples collapsed onto the vertices of a radius-rho simplex."""
    vertices = regular_simplex(k, h, rho)  # (K, h)
    labels = np.repeat(np.arange(k), per_class)
    return vertices, vertices[labels], labels


# ------------------------------------------------------------------------- pure functions


def test_pairwise_cosines_match_double_loop():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(6, 4))
    v[4] = 0.0  # a zero vector: its cosines are undefined
    got = metrics.pairwise_cosines(v)
    expected = []
    for i in range(6):
        for j in range(i + 1, 6):
            ni, nj = np.linalg.norm(v[i]), np.linalg.norm(v[j])
            expected.append(v[i] @ v[j] / (ni * nj) if ni > 0 and nj > 0 else np.nan)
    assert got.shape == (15,)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    assert np.isnan(got).sum() == 5


def test_nc1_matches_naive_loop_with_an_empty_class():
    rng = np.random.default_rng(1)
    k, h, n = 6, 3, 60
    labels = rng.integers(0, k - 1, size=n)  # class 5 never occurs
    labels[:5] = np.arange(5)
    z = rng.normal(size=(n, h)) + 3 * rng.normal(size=(k, h))[labels]
    counts = np.bincount(labels, minlength=k)
    means = np.full((k, h), np.nan)
    scatter = np.zeros((h, h))
    for c in range(k - 1):
        means[c] = z[labels == c].mean(axis=0)
    for i in range(n):
        d = z[i] - means[labels[i]]
        scatter += np.outer(d, d)
    # Naive: present classes only; h < K'-1 so Sigma_B is invertible.
    present = means[: k - 1]
    mu_g = present.mean(axis=0)
    sigma_b = sum(np.outer(m - mu_g, m - mu_g) for m in present) / (k - 1)
    expected = np.trace(scatter / n @ np.linalg.inv(sigma_b)) / (k - 1)
    assert metrics.nc1(scatter, means, counts) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("k, h", [(3, 5), (10, 16)])
def test_nc1_simplex_closed_form(k, h):
    # Two samples per class at mu_k +- s u. Sigma_B = rho^2/(K-1) P (P: projector onto the
    # simplex's span), Sigma_W = s^2 u u^T, so nc1 = (K-1) s^2 |P u|^2 / (rho^2 K).
    rho, s = 2.0, 0.3
    means = regular_simplex(k, h, rho)
    counts = np.full(k, 2)
    for u_index, pu2 in ((0, 1.0), (h - 1, 0.0)):  # in the span; orthogonal to it
        u = np.zeros(h)
        u[u_index] = 1.0
        scatter = 2 * k * s**2 * np.outer(u, u)
        expected = (k - 1) * s**2 * pu2 / (rho**2 * k)
        assert metrics.nc1(scatter, means, counts) == pytest.approx(expected, abs=1e-12)


def test_nc1_undefined_without_between_class_spread():
    means = np.ones((3, 2))
    assert math.isnan(metrics.nc1(np.eye(2), means, np.array([2, 2, 2])))
    assert math.isnan(metrics.nc1(np.eye(2), means, np.array([2, 0, 0])))


@pytest.mark.parametrize("k", [3, 10])
def test_simplex_gram_distance_closed_forms(k):
    g_star = simplex_gram(k)
    assert metrics.simplex_gram_distance(regular_simplex(k, k + 2, 3.0)) < 1e-12
    # Orthogonal means: ||I - G*||_F / ||G*||_F = sqrt(K/(K-1)) / (K/sqrt(K-1)) = 1/sqrt(K).
    by_hand = np.linalg.norm(np.eye(k) - g_star) / np.linalg.norm(g_star)
    orthogonal = metrics.simplex_gram_distance(5.0 * np.eye(k))
    assert orthogonal == pytest.approx(by_hand, rel=1e-12)
    assert orthogonal == pytest.approx(1 / math.sqrt(k), rel=1e-12)
    # Coincident means: G = 11^T, distance sqrt(K).
    assert metrics.simplex_gram_distance(np.ones((k, 4))) == pytest.approx(math.sqrt(k))
    # Missing classes compare against the principal block of the K-class G*.
    block = regular_simplex(k, k - 1)[: k - 1]
    assert metrics.simplex_gram_distance(block, num_classes=k) < 1e-12
    assert metrics.simplex_gram_distance(block) > 0.01


def test_iterations_to_fit():
    its = [500, 1000, 1500, 2000]
    assert metrics.iterations_to_fit(its, [0.2, 0.99, 1.0, 1.0], 1.0) == 1500
    assert metrics.iterations_to_fit(its, [0.2, 0.99, 0.98, 1.0], 0.99) == 1000  # met exactly
    assert metrics.iterations_to_fit(its, [0.2, 0.5, np.nan, 0.9], 1.0) is None
    assert metrics.iterations_to_fit(its, [1.0, 0.5, 0.5, 0.5], 1.0) == 500


def naive_held(iterations, accuracies, threshold) -> int:
    """Walk back from the last evaluation while it is fitted; held from the earliest one."""
    start = None
    for i in reversed(range(len(iterations))):
        if not accuracies[i] >= threshold:  # NaN: not fitted
            break
        start = i
    return 0 if start is None else iterations[-1] - iterations[start]


def test_iterations_held_fit_against_a_naive_loop():
    its = [500, 1000, 1500, 2000]
    assert metrics.iterations_held_fit(its, [0.2, 1.0, 1.0, 1.0], 1.0) == 1000
    assert metrics.iterations_held_fit(its, [1.0, 0.9, 1.0, 1.0], 1.0) == 500  # lost, regained
    assert metrics.iterations_held_fit(its, [1.0, 1.0, 1.0, 0.9], 1.0) == 0  # lost at the end
    assert metrics.iterations_held_fit(its, [0.2, 0.3, 0.4, 1.0], 1.0) == 0  # fit at the end
    assert metrics.iterations_held_fit(its, [1.0, 1.0, np.nan, 1.0], 1.0) == 0
    assert metrics.iterations_held_fit([], [], 1.0) == 0
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        iterations = np.cumsum(rng.integers(1, 100, n)).tolist()
        accuracies = rng.choice([0.5, 0.99, 1.0, np.nan], n, p=[0.2, 0.1, 0.6, 0.1]).tolist()
        for threshold in (0.99, 1.0):
            assert metrics.iterations_held_fit(iterations, accuracies, threshold) == (
                naive_held(iterations, accuracies, threshold))


def test_evaluation_interval_is_the_largest_step_from_zero():
    assert metrics.evaluation_interval([50, 100, 150, 175]) == 50
    assert metrics.evaluation_interval([80, 100]) == 80  # the first row counts from 0
    assert metrics.evaluation_interval([3000]) == 3000
    assert metrics.evaluation_interval([]) == 0


def test_nearest_class_mean_never_predicts_empty_class():
    means = np.array([[0.0, 0.0], [np.nan, np.nan], [10.0, 0.0]])
    z = np.array([[0.1, 0.0], [9.0, 1.0], [4.0, 0.0], [6.0, 0.0]])
    pred = metrics.nearest_class_mean(z, means, np.array([True, False, True]))
    np.testing.assert_array_equal(pred, [0, 2, 0, 2])


# --------------------------------------------------------------------------------- stage


@pytest.mark.parametrize("k, h", [(3, 2), (3, 6), (10, 9), (10, 13)])
def test_regular_simplex_collapse(tmp_path, k, h):
    vertices, z, labels = simplex_run(k, h)
    head = regular_simplex(k, h, 1.0)
    paths = write_run(
        tmp_path, train_z=z, train_noisy=labels, test_z=vertices, test_labels=np.arange(k),
        head=head, model="ce_fixed",
    )
    m, cos = run_stage(tmp_path, paths)
    target = -1 / (k - 1)
    assert m["simplex_cosine"] == pytest.approx(target, abs=1e-15)
    for stat in ("mean", "min", "max"):
        assert m[f"class_mean_cosine_{stat}"] == pytest.approx(target, abs=1e-6)
        assert m[f"head_cosine_{stat}"] == pytest.approx(target, abs=1e-6)
    assert m["class_mean_cosine_std"] < 1e-6
    assert m["class_mean_cosine_deviation"] < 1e-6
    assert m["sample_cosine_mean"] == pytest.approx(1.0, abs=1e-12)
    assert m["sample_cosine_min"] == pytest.approx(1.0, abs=1e-12)
    assert m["sample_cosine_std"] < 1e-12
    assert m["class_mean_norm_mean"] == pytest.approx(2.0, rel=1e-6)
    assert m["class_mean_norm_cv"] < 1e-6
    assert abs(m["nc1"]) < 1e-12
    assert m["simplex_gram_distance"] < 1e-6
    assert m["head_class_mean_alignment"] == pytest.approx(1.0, abs=1e-6)
    for key in ("train_accuracy_noisy", "train_accuracy_clean", "train_accuracy_head_noisy",
                "test_accuracy_class_mean", "test_accuracy_head"):
        assert m[key] == 1.0, key
    assert (m["num_classes"], m["num_classes_present"], m["representation_dim"]) == (k, k, h)
    assert (m["num_train"], m["num_test"]) == (3 * k, k)
    counts = cos["kind"].value_counts().to_dict()
    assert counts == {"class_means": k * (k - 1) // 2, "sample_to_class_mean": 3 * k,
                      "head_weights": k * (k - 1) // 2}
    assert list(cos["kind"].drop_duplicates()) == list(geometry.COSINE_KINDS)
    np.testing.assert_allclose(cos.loc[cos.kind == "class_means", "value"], target, atol=1e-6)


def test_orthogonal_class_means(tmp_path):
    k, h = 4, 6
    means = 3.0 * np.eye(k, h)
    labels = np.repeat(np.arange(k), 2)
    m, cos = run_stage(tmp_path, write_run(tmp_path, train_z=means[labels], train_noisy=labels,
                                           head=means, model="ce"))
    for stat in ("mean", "min", "max"):
        assert m[f"class_mean_cosine_{stat}"] == pytest.approx(0.0, abs=1e-12)
        assert m[f"head_cosine_{stat}"] == pytest.approx(0.0, abs=1e-12)
    g_star = simplex_gram(k)
    by_hand = np.linalg.norm(np.eye(k) - g_star) / np.linalg.norm(g_star)
    assert m["simplex_gram_distance"] == pytest.approx(by_hand, rel=1e-12)
    assert m["class_mean_cosine_deviation"] == pytest.approx(1 / (k - 1), rel=1e-12)
    assert m["class_mean_norm_mean"] == pytest.approx(3.0, rel=1e-12)
    assert m["class_mean_norm_cv"] == pytest.approx(0.0, abs=1e-12)
    assert m["nc1"] == pytest.approx(0.0, abs=1e-12)
    assert m["test_accuracy_class_mean"] is None and m["test_accuracy_head"] is None


def test_collapsed_classes(tmp_path):
    rng = np.random.default_rng(2)
    k, h = 5, 8
    labels = np.repeat(np.arange(k), 20)
    z = np.eye(h)[0] + 1e-3 * rng.normal(size=(labels.size, h))
    m, _ = run_stage(tmp_path, write_run(tmp_path, train_z=z, train_noisy=labels,
                                         model="supcon"))
    assert m["class_mean_cosine_min"] > 0.9999
    assert m["sample_cosine_min"] > 0.999
    assert m["class_mean_cosine_deviation"] == pytest.approx(1 + 1 / (k - 1), abs=1e-3)
    assert m["simplex_gram_distance"] == pytest.approx(math.sqrt(k), rel=1e-3)
    assert m["nc1"] > 1.0  # within-class spread as large as the between-class one


def test_noisy_labels_by_hand(tmp_path):
    # 1-d, K = 2: class 0 at -1 (x3); class 1 at +1, +1 and one flipped sample at -1.
    # mu_0 = -1, mu_1 = 1/3, boundary -1/3: the flipped sample is predicted 0.
    z = np.array([[-1.0], [-1.0], [-1.0], [1.0], [1.0], [-1.0]])
    noisy = np.array([0, 0, 0, 1, 1, 1])
    clean = np.array([0, 0, 0, 1, 1, 0])
    paths = write_run(tmp_path, train_z=z, train_noisy=noisy, train_clean=clean,
                      test_z=[[-0.5], [0.0]], test_labels=[0, 0], model="supcon",
                      accuracies=(0.5, 5 / 6, 5 / 6))
    m, cos = run_stage(tmp_path, paths, threshold=0.8)
    assert m["train_accuracy_noisy"] == pytest.approx(5 / 6)
    assert m["train_accuracy_clean"] == 1.0
    assert m["test_accuracy_class_mean"] == 0.5
    assert m["sample_cosine_mean"] == pytest.approx(2 / 3)
    assert m["sample_cosine_min"] == pytest.approx(-1.0)
    assert m["class_mean_cosine_mean"] == pytest.approx(-1.0)  # the K=2 simplex value
    # Sigma_W = (4/9 + 4/9 + 16/9)/6 = 4/9, Sigma_B = 4/9, nc1 = 1/K.
    assert m["nc1"] == pytest.approx(0.5, rel=1e-12)
    assert m["class_mean_norm_cv"] == pytest.approx((1 - 1 / 3) / 2 / ((1 + 1 / 3) / 2))
    assert (m["iterations_to_fit"], m["final_iteration"]) == (200, 300)
    assert (m["iterations_held_fit"], m["evaluation_interval"]) == (100, 100)
    assert m["final_loss"] == pytest.approx(2 / 3)
    samples = cos.loc[cos.kind == "sample_to_class_mean", "value"].to_numpy()
    np.testing.assert_allclose(samples, [1, 1, 1, 1, 1, -1])


def test_empty_class_is_left_out(tmp_path):
    k, h = 4, 3
    vertices = regular_simplex(k, h)
    labels = np.array([0, 0, 1, 1, 2, 2])  # class 3 has no training sample
    paths = write_run(tmp_path, train_z=vertices[labels], train_noisy=labels,
                      test_z=vertices, test_labels=np.arange(k), num_classes=k,
                      model="supcon")
    m, cos = run_stage(tmp_path, paths)
    assert m["num_classes_present"] == 3
    assert (cos.kind == "class_means").sum() == 3
    assert m["class_mean_cosine_mean"] == pytest.approx(-1 / 3, abs=1e-6)
    assert m["simplex_gram_distance"] < 1e-6
    assert m["test_accuracy_class_mean"] == 0.75  # the test sample of class 3 is missed
    assert m["nc1"] == pytest.approx(0.0, abs=1e-12)


def test_random_run_matches_naive_and_is_chunk_independent(tmp_path):
    rng = np.random.default_rng(3)
    k, h, n, n_test = 5, 7, 103, 41
    centres = rng.normal(size=(k, h))
    noisy = rng.integers(0, k, size=n)
    clean = np.where(rng.random(n) < 0.2, rng.integers(0, k, size=n), noisy)
    z = (centres[noisy] + 0.8 * rng.normal(size=(n, h))).astype(np.float32).astype(np.float64)
    test_labels = rng.integers(0, k, size=n_test)
    tz = (centres[test_labels] + rng.normal(size=(n_test, h))).astype(np.float32)
    tz = tz.astype(np.float64)
    w = rng.normal(size=(k, h)).astype(np.float32).astype(np.float64)
    paths = write_run(tmp_path, train_z=z, train_noisy=noisy, train_clean=clean, test_z=tz,
                      test_labels=test_labels, head=w, model="ce")
    small, cos_small = run_stage(tmp_path, paths, name="small", batch_size=7)
    large, cos_large = run_stage(tmp_path, paths, name="large", batch_size=10_000)
    assert small.keys() == large.keys()
    for key, value in small.items():
        if isinstance(value, float):
            assert value == pytest.approx(large[key], rel=1e-12, abs=1e-12), key
        else:
            assert value == large[key], key
    assert list(cos_small.kind) == list(cos_large.kind)
    np.testing.assert_allclose(cos_small.value, cos_large.value, rtol=1e-12, atol=1e-12)

    # Naive full-matrix versions of the same numbers.
    means = np.array([z[noisy == c].mean(axis=0) for c in range(k)])
    d_train = ((z[:, None, :] - means[None]) ** 2).sum(axis=2)  # (N, K)
    d_test = ((tz[:, None, :] - means[None]) ** 2).sum(axis=2)
    assert small["train_accuracy_noisy"] == np.mean(d_train.argmin(1) == noisy)
    assert small["train_accuracy_clean"] == np.mean(d_train.argmin(1) == clean)
    assert small["test_accuracy_class_mean"] == np.mean(d_test.argmin(1) == test_labels)
    assert small["test_accuracy_head"] == np.mean((tz @ w.T).argmax(1) == test_labels)
    assert small["train_accuracy_head_noisy"] == np.mean((z @ w.T).argmax(1) == noisy)
    sample_cos = [z[i] @ means[noisy[i]] / np.linalg.norm(z[i]) / np.linalg.norm(means[noisy[i]])
                  for i in range(n)]
    assert small["sample_cosine_mean"] == pytest.approx(np.mean(sample_cos), rel=1e-12)
    assert small["sample_cosine_std"] == pytest.approx(np.std(sample_cos), rel=1e-12)
    unit = means / np.linalg.norm(means, axis=1, keepdims=True)
    pair = [unit[i] @ unit[j] for i in range(k) for j in range(i + 1, k)]
    assert small["class_mean_cosine_max"] == pytest.approx(max(pair), rel=1e-12)
    align = np.mean([w[c] @ unit[c] / np.linalg.norm(w[c]) for c in range(k)])
    assert small["head_class_mean_alignment"] == pytest.approx(align, rel=1e-12)
    scatter = sum(np.outer(z[i] - means[noisy[i]], z[i] - means[noisy[i]]) for i in range(n))
    expected_nc1 = metrics.nc1(scatter, means, np.bincount(noisy, minlength=k))
    assert small["nc1"] == pytest.approx(expected_nc1, rel=1e-10)


def test_supcon_has_no_head_metrics_and_json_has_no_nan(tmp_path):
    vertices, z, labels = simplex_run(3, 4)
    z[0] = 0.0  # a zero embedding: its cosine is undefined, not NaN in the JSON
    paths = write_run(tmp_path, train_z=z, train_noisy=labels, model="supcon",
                      accuracies=(0.1, 0.2))
    m, cos = run_stage(tmp_path, paths)
    for key in ("head_cosine_mean", "head_cosine_std", "head_cosine_min", "head_cosine_max",
                "head_class_mean_alignment", "test_accuracy_head", "train_accuracy_head_noisy",
                "iterations_to_fit", "test_accuracy_class_mean"):
        assert m[key] is None, key
    assert m["model"] == "supcon"
    assert m["sample_cosine_min"] == pytest.approx(1.0)
    assert (cos.kind == "head_weights").sum() == 0
    samples = cos.loc[cos.kind == "sample_to_class_mean", "value"]
    assert samples.isna().sum() == 1 and len(samples) == 9


def test_metrics_keys(tmp_path):
    vertices, z, labels = simplex_run(3, 2)
    m, _ = run_stage(tmp_path, write_run(tmp_path, train_z=z, train_noisy=labels,
                                         head=vertices, model="ce"))
    assert sorted(m) == sorted([
        "dataset", "imbalance_ratio", "model", "augmentation", "temperature", "batch_size",
        "iterations", "noise_fraction", "seed", "num_classes",
        "representation_dim",
        "fit_threshold", "num_train", "num_test", "num_classes_present",
        "class_mean_cosine_mean", "class_mean_cosine_std", "class_mean_cosine_min",
        "class_mean_cosine_max", "simplex_cosine", "class_mean_cosine_deviation",
        "sample_cosine_mean", "sample_cosine_std", "sample_cosine_min",
        "class_mean_norm_mean", "class_mean_norm_std", "class_mean_norm_cv",
        "head_cosine_mean", "head_cosine_std", "head_cosine_min", "head_cosine_max",
        "head_class_mean_alignment", "nc1", "simplex_gram_distance",
        "train_accuracy_noisy", "train_accuracy_clean", "train_accuracy_head_noisy",
        "test_accuracy_class_mean", "test_accuracy_head",
        "final_loss", "final_iteration", "iterations_to_fit",
        "iterations_held_fit", "evaluation_interval",
        "supcon_optimum", "final_supcon_gap", "final_loss_gap",
        "nc2_equinorm_cv", "nc2_equiangular_std", "nc2_simplex_angle_deviation",
        "nc2_head_equinorm_cv", "nc3_self_duality", "nc4_head_ncm_agreement",
        "probe_train_accuracy_noisy", "probe_train_accuracy_clean", "probe_test_accuracy",
        "probe_iterations", "probe_converged",
        # the class-imbalance view: per test class, and by majority / minority group
        "test_accuracy_by_class", "test_accuracy_majority", "test_accuracy_minority",
        "test_accuracy_head_majority", "test_accuracy_head_minority",
        "class_mean_cosine_majority", "class_mean_cosine_minority", "class_mean_cosine_across",
        "head_cosine_majority", "head_cosine_minority", "head_cosine_across",
    ])
    n = len(pq.read_table(paths_log := tmp_path / "run" / "train_log.parquet"))
    assert m["supcon_optimum"] == 1.0
    assert m["final_supcon_gap"] == pytest.approx(3.0 / n - 1.0)
    assert m["final_loss_gap"] == pytest.approx(0.5 / n)
    assert paths_log.exists()
    assert (m["dataset"], m["seed"], m["noise_fraction"], m["fit_threshold"]) == (
        "synthetic", 7, 0.0, 1.0)


def test_outputs_are_byte_identical(tmp_path):
    _, z, labels = simplex_run(3, 4)
    paths = write_run(tmp_path, train_z=z, train_noisy=labels, model="supcon")
    run_stage(tmp_path, paths, name="a")
    run_stage(tmp_path, paths, name="b", batch_size=2)
    for f in ("metrics.json", "cos.pq"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


# --------------------------------------------------------------------------------- errors


def _stage(tmp_path, paths):
    out = {"metrics": tmp_path / "o" / "m.json", "cosines": tmp_path / "o" / "c.pq"}
    try:
        ident = identity(paths)
    except (KeyError, TypeError, OSError):  # broken or missing file: the stage must name it
        ident = {"run": Run("synthetic", 1.0, "ce", "none", 0.1, 256, 3000, 0.0, 0)}
    return geometry.measure_geometry(
        {"geometry": {"fit_threshold": 1.0, "probe": PROBE}}, **ident, **paths, **out
    )


@pytest.mark.parametrize("column", ["noisy_label", "embedding", "split"])
def test_missing_column_names_the_file(tmp_path, column):
    _, z, labels = simplex_run(3, 2)
    paths = write_run(tmp_path, train_z=z, train_noisy=labels, model="supcon")
    table = pq.read_table(paths["embeddings"])
    pq.write_table(table.drop_columns([column]), paths["embeddings"])
    with pytest.raises(io.InputError, match=f"embeddings.parquet: missing column '{column}'"):
        _stage(tmp_path, paths)
    assert not (tmp_path / "o").exists()


def test_wrong_types_and_missing_files(tmp_path):
    _, z, labels = simplex_run(3, 2)
    paths = write_run(tmp_path, train_z=z, train_noisy=labels, model="supcon")
    table = pq.read_table(paths["train_log"])
    pq.write_table(table.set_column(0, "iteration", table["iteration"].cast(pa.float64())),
                   paths["train_log"])
    with pytest.raises(io.InputError, match="train_log.parquet: column 'iteration' has type"):
        _stage(tmp_path, paths)
    emb = pq.read_table(paths["embeddings"])
    variable = emb.set_column(4, "embedding", emb["embedding"].cast(pa.list_(pa.float32())))
    pq.write_table(variable, paths["embeddings"])
    with pytest.raises(io.InputError, match="embeddings.parquet: column 'embedding' has type"):
        _stage(tmp_path, paths)
    paths["embeddings"].unlink()
    with pytest.raises(io.InputError, match="embeddings.parquet: missing input file"):
        _stage(tmp_path, paths)


def test_head_dimension_mismatch_names_both_files(tmp_path):
    vertices, z, labels = simplex_run(3, 2)
    paths = write_run(tmp_path, train_z=z, train_noisy=labels, head=vertices, model="ce")
    other = write_run(tmp_path, train_z=np.zeros((3, 5)), train_noisy=[0, 1, 2],
                      head=np.eye(3, 5), model="ce", name="other")
    paths["head"] = other["head"]
    with pytest.raises(ValueError, match=r"other/head\.parquet .*/run/embeddings\.parquet"):
        _stage(tmp_path, paths)


def test_head_rows_must_match_the_model(tmp_path):
    _, z, labels = simplex_run(3, 2)
    paths = write_run(tmp_path, train_z=z, train_noisy=labels, model="ce")  # no head rows
    with pytest.raises(io.InputError, match="head.parquet: model 'ce' has a head"):
        _stage(tmp_path, paths)


def test_labels_out_of_range_and_missing_metadata(tmp_path):
    _, z, labels = simplex_run(3, 2)
    paths = write_run(tmp_path, train_z=z, train_noisy=labels, num_classes=2, model="supcon")
    with pytest.raises(io.InputError, match="'clean_label' must be in 0..1"):
        _stage(tmp_path, paths)
    pq.write_table(pq.read_table(paths["embeddings"]).replace_schema_metadata({}),
                   paths["embeddings"])
    with pytest.raises(io.InputError, match="embeddings.parquet: metadata 'train_config'"):
        _stage(tmp_path, paths)


def test_embeddings_of_another_run_are_refused(tmp_path):
    _, z, labels = simplex_run(3, 4)
    paths = write_run(tmp_path, train_z=z, train_noisy=labels, model="supcon")
    out = {"metrics": tmp_path / "o" / "m.json", "cosines": tmp_path / "o" / "c.pq"}
    wrong = {"run": dataclasses.replace(identity(paths)["run"], seed=99)}
    with pytest.raises(io.InputError, match=r"embeddings.parquet: made by Run\(.*seed=7\), "
                                            r"expected Run\(.*seed=99\)"):
        geometry.measure_geometry({"geometry": {"fit_threshold": 1.0, "probe": PROBE}}, **wrong,
                                  **paths, **out)
    assert not out["metrics"].exists()


@pytest.mark.parametrize("swapped", ["head", "train_log"])
def test_a_head_or_log_of_another_training_of_the_same_run_is_refused(tmp_path, swapped):
    """Issue 23: two trainings of one run (same identity, same shapes; e.g. params changed
    in between) give files that only their input md5s tell apart. The head must come from
    the checkpoint the embeddings do, the log from the job that wrote that checkpoint."""
    vertices, z, labels = simplex_run(3, 4)
    paths = write_run(tmp_path, train_z=z, train_noisy=labels, head=vertices, name="first")
    other = write_run(tmp_path, train_z=z, train_noisy=labels, head=vertices, name="second",
                      checkpoint_md5="d" * 32)
    mixed = {**paths, swapped: other[swapped]}
    field = "inputs.checkpoint" if swapped == "head" else "written_with.checkpoint"
    with pytest.raises(io.InputError, match=(
            rf"second/{swapped}.parquet: made from checkpoint with md5 d{{32}} \(field {field}\),"
            r" but .*first/embeddings.parquet was made from checkpoint with md5 c{32}")):
        run_stage(tmp_path, mixed)
    assert not (tmp_path / "out").exists()
    run_stage(tmp_path, other)  # each training's own three files are accepted


@pytest.mark.parametrize("swapped", ["head", "train_log"])
def test_a_head_or_log_of_another_run_is_refused(tmp_path, swapped):
    _, z, labels = simplex_run(3, 4)
    paths = write_run(tmp_path, train_z=z, train_noisy=labels, model="supcon")
    cfg = io.read_metadata(paths[swapped])
    cfg["train_config"]["seed"] = 99
    table = pq.read_table(paths[swapped])
    io.write_parquet(table.replace_schema_metadata(None), paths[swapped], metadata=cfg)
    with pytest.raises(io.InputError, match=rf"{swapped}.parquet: made by Run\(.*seed=99\), "
                                            r"expected Run\(.*seed=7\)"):
        run_stage(tmp_path, paths)


# ------------------------------------------------------------------ NC2-NC4 and the probe


def test_collapse_measures_vanish_on_a_collapsed_simplex_with_its_head(tmp_path):
    vertices, z, labels = simplex_run(4, 5)
    m, _ = run_stage(tmp_path, write_run(tmp_path, train_z=z, train_noisy=labels,
                                         head=2.5 * vertices, model="ce"))
    for key in ("nc2_equinorm_cv", "nc2_equiangular_std", "nc2_simplex_angle_deviation",
                "nc2_head_equinorm_cv", "nc3_self_duality"):
        assert m[key] == pytest.approx(0.0, abs=1e-6), key  # embeddings are stored float32
    assert m["nc4_head_ncm_agreement"] == 1.0
    # Separable, collapsed classes: the probe fits them and predicts the clean labels.
    assert m["probe_train_accuracy_noisy"] == 1.0 and m["probe_converged"] is True


def test_collapse_measures_of_a_perturbed_simplex_by_hand():
    """K = 3 in the plane: unit vertices at 0, 120 and 240 degrees, the last one doubled.

    mu_G = (-1/6, -sqrt(3)/6); centred means (7/6, sqrt(3)/6), (-1/3, 2 sqrt(3)/3),
    (-5/6, -5 sqrt(3)/6) with norms sqrt(13)/3, sqrt(13)/3, 5/3; pairwise cosines -1/26,
    -2.5/sqrt(13), -2.5/sqrt(13).
    """
    from pipeline.maths.collapse import collapse_measures

    s3 = np.sqrt(3.0)
    means = np.array([[1.0, 0.0], [-0.5, s3 / 2], [-1.0, -s3]])
    norms = np.array([np.sqrt(13) / 3, np.sqrt(13) / 3, 5 / 3])
    cos = np.array([-1 / 26, -2.5 / np.sqrt(13), -2.5 / np.sqrt(13)])
    head = means - means.mean(axis=0)  # the centred means themselves: self-dual
    m = collapse_measures(means, head)
    assert m["nc2_equinorm_cv"] == pytest.approx(norms.std() / norms.mean(), rel=1e-12)
    assert m["nc2_equiangular_std"] == pytest.approx(cos.std(), rel=1e-12)
    assert m["nc2_simplex_angle_deviation"] == pytest.approx(np.abs(cos + 0.5).mean(), rel=1e-12)
    assert m["nc2_head_equinorm_cv"] == pytest.approx(norms.std() / norms.mean(), rel=1e-12)
    assert m["nc3_self_duality"] == pytest.approx(0.0, abs=1e-12)
    # A head that is the raw (uncentred) simplex: distance by hand, sqrt(sum of squares).
    raw = np.array([[1.0, 0.0], [-0.5, s3 / 2], [-0.5, -s3 / 2]])
    centred = means - means.mean(axis=0)
    expected = np.linalg.norm(raw / np.linalg.norm(raw) - centred / np.linalg.norm(centred))
    assert collapse_measures(means, raw)["nc3_self_duality"] == pytest.approx(expected, rel=1e-12)
    assert collapse_measures(means, None)["nc3_self_duality"] is None


def test_nc4_counts_disagreement_between_head_and_class_means(tmp_path):
    """Two classes on a line; the head's boundary is shifted so that exactly the samples
    at x = 0.2 go to class 1 by the head but to class 0 by the nearer mean (-1 vs 1)."""
    z = np.array([[-1.0, 0.0], [-1.0, 0.0], [0.2, 0.0], [1.8, 0.0], [1.0, 0.0], [1.0, 0.0]])
    labels = np.array([0, 0, 0, 1, 1, 1])  # means: (-0.6, 0) and (1.267, 0)
    head = np.array([[-1.0, 0.0], [1.0, 0.0]])  # argmax: class 1 iff x > 0
    m, _ = run_stage(tmp_path, write_run(tmp_path, train_z=z, train_noisy=labels, head=head,
                                         model="ce"))
    # NCM boundary at (-0.6 + 1.267) / 2 = 0.333: x = 0.2 is class 0 for NCM, 1 for the head.
    assert m["nc4_head_ncm_agreement"] == pytest.approx(5 / 6, rel=1e-12)


def test_probe_matches_scikit_learn_fitted_by_hand(tmp_path):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(3), 30)
    z = rng.normal(size=(90, 4)) + np.eye(3, 4)[labels]  # overlapping classes
    test_z = rng.normal(size=(30, 4)) + np.eye(3, 4)[np.repeat(np.arange(3), 10)]
    paths = write_run(tmp_path, train_z=z, train_noisy=labels, model="supcon",
                      test_z=test_z, test_labels=np.repeat(np.arange(3), 10))
    m, _ = run_stage(tmp_path, paths)
    z, test_z = (a.astype(np.float32).astype(np.float64) for a in (z, test_z))  # as stored
    reference = LogisticRegression(C=1.0, max_iter=1000, tol=1e-8).fit(z, labels)
    assert m["probe_train_accuracy_noisy"] == pytest.approx(reference.score(z, labels))
    assert m["probe_test_accuracy"] == pytest.approx(
        reference.score(test_z, np.repeat(np.arange(3), 10)))
    assert 0.5 < m["probe_train_accuracy_noisy"] < 1.0  # neither trivial nor separable


def test_probe_objective_is_scikit_learns():
    """Our objective's gradient vanishes at scikit-learn's solution (same minimum), and it
    matches finite differences."""
    from scipy.optimize import approx_fprime
    from sklearn.linear_model import LogisticRegression

    from pipeline.maths.collapse import _probe_objective

    rng = np.random.default_rng(5)
    y = np.repeat(np.arange(3), 20)
    x = rng.normal(size=(60, 4)) + np.eye(3, 4)[y]
    ref = LogisticRegression(C=0.7, max_iter=5000, tol=1e-12).fit(x, y)
    theta = np.concatenate([ref.coef_.ravel(), ref.intercept_])
    _, grad = _probe_objective(theta, x, y, 3, 0.7)
    assert np.abs(grad).max() < 1e-6
    probe = np.concatenate([rng.normal(size=12), rng.normal(size=3)])
    _, grad = _probe_objective(probe, x, y, 3, 0.7)
    numeric = approx_fprime(probe, lambda t: _probe_objective(t, x, y, 3, 0.7)[0], 1e-7)
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-6)


def test_class_groups_on_a_simplex_and_a_collapsed_minority(tmp_path):
    # K = 4: classes 2 and 3 are the minority (pipeline/maths/imbalance.py). On the simplex
    # every group's cosines are -1/(K-1) and every test class is classified right.
    vertices, z, labels = simplex_run(4, 3)
    m, _ = run_stage(tmp_path, write_run(tmp_path, train_z=z, train_noisy=labels, test_z=z,
                                         test_labels=labels, head=vertices, model="ce"))
    for group in ("majority", "minority", "across"):
        assert m[f"class_mean_cosine_{group}"] == pytest.approx(-1 / 3)
        assert m[f"head_cosine_{group}"] == pytest.approx(-1 / 3)
    assert m["test_accuracy_by_class"] == [1.0] * 4
    assert m["test_accuracy_majority"] == m["test_accuracy_minority"] == 1.0
    # Minority collapse: both minority head rows point the same way. Test samples of class
    # 3 then score as class 2 (argmax takes the first of a tie), so class 3 is never right.
    head = vertices.copy()
    head[3] = head[2]
    m, _ = run_stage(tmp_path, write_run(tmp_path, train_z=z, train_noisy=labels, test_z=z,
                                         test_labels=labels, head=head, model="ce",
                                         name="collapsed"), name="collapsed")
    assert m["head_cosine_minority"] == pytest.approx(1.0)
    assert m["head_cosine_majority"] == pytest.approx(-1 / 3)
    across = [np.dot(head[i], head[j]) / np.dot(head[i], head[i]) for i in (0, 1) for j in (2, 3)]
    assert m["head_cosine_across"] == pytest.approx(np.mean(across))
    assert m["test_accuracy_head_majority"] == 1.0
    assert m["test_accuracy_head_minority"] == 0.5  # class 2 right, class 3 never
