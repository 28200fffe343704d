"""CIFAR archives: checksum verification, format, and refusal of anything else."""

import io
import pickle
import tarfile

import numpy as np
import pytest
from tiny_cifar import write_tiny_cifar

from pipeline.infra import datasets
from pipeline.infra.datasets import CIFAR, DatasetError
from pipeline.infra.io import file_md5


@pytest.mark.parametrize("name,k,train_batches", [("cifar10", 10, 5), ("cifar100", 100, 1)])
def test_tiny_archive_loads_in_the_official_layout(tmp_path, name, k, train_batches):
    path = tmp_path / CIFAR[name].filename
    md5 = write_tiny_cifar(path, name, per_batch=20)
    data = datasets.load(name, {"archive": str(path), "md5": md5})
    assert data.num_classes == k and data.pixel_max == 255
    assert data.train.images.shape == (20 * train_batches, 3, 32, 32)
    assert data.train.images.dtype == np.uint8
    assert data.test.images.shape == (20, 3, 32, 32)
    np.testing.assert_array_equal(data.test.labels, np.arange(20) % k)


def test_missing_archive_names_path_checksum_and_source(tmp_path):
    path = tmp_path / "raw" / "cifar-10-python.tar.gz"
    with pytest.raises(DatasetError) as e:
        datasets.load("cifar10", {"archive": str(path)})
    message = str(e.value)
    assert str(path) in message and "missing" in message
    assert "c58f30108f718f92721af3b95e74349a" in message  # the published checksum
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message


def test_an_archive_path_that_is_a_directory_says_so(tmp_path):
    path = tmp_path / "raw"
    path.mkdir()
    with pytest.raises(DatasetError) as e:
        datasets.load("cifar10", {"archive": str(path)})
    message = str(e.value)
    assert message.startswith(f"{path}: is a directory, not the dataset archive for 'cifar10'")
    assert "names the file itself, cifar-10-python.tar.gz" in message
    assert "missing" not in message


def test_an_unreadable_archive_says_so(tmp_path, monkeypatch):
    import os

    path = tmp_path / "cifar-10-python.tar.gz"
    md5 = write_tiny_cifar(path, "cifar10")
    path.chmod(0)
    if os.geteuid() == 0:  # root reads it all the same: fail the read as the kernel would
        def denied(_):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(datasets, "file_md5", denied)
    with pytest.raises(DatasetError) as e:
        datasets.load("cifar10", {"archive": str(path), "md5": md5})
    message = str(e.value)
    assert message.startswith(f"{path}: dataset archive for 'cifar10' is unreadable "
                              "(Permission denied)")
    assert "missing" not in message and "md5 is" not in message


def test_wrong_checksum_is_refused(tmp_path):
    path = tmp_path / "cifar-100-python.tar.gz"
    md5 = write_tiny_cifar(path, "cifar100")
    with pytest.raises(DatasetError, match=rf"md5 is {md5}, expected md5 eb9058c3a382ffc7106e"):
        datasets.load("cifar100", {"archive": str(path)})


def test_corrupt_archive_is_named(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DatasetError, match=r"cifar-10-python.tar.gz: corrupt cifar10 archive"):
        datasets.load("cifar10", {"archive": str(path), "md5": file_md5(path)})


def test_archive_with_code_in_its_pickle_never_runs_it(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("open('pwned', 'w').write('x')",))

    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for member in (*CIFAR["cifar10"].train_members, "test_batch"):
            blob = pickle.dumps({b"data": Evil(), b"labels": [0]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{member}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(DatasetError, match="refusing global builtins.exec"):
        datasets.load("cifar10", {"archive": str(path), "md5": file_md5(path)})
    assert not (tmp_path / "pwned").exists()


def test_download_verifies_the_checksum_and_leaves_nothing_on_mismatch(tmp_path, monkeypatch):
    from dataclasses import replace

    mirror = tmp_path / "mirror"
    md5 = write_tiny_cifar(mirror / "cifar-10-python.tar.gz", "cifar10")
    monkeypatch.setattr(datasets, "CIFAR_MIRROR", mirror.as_uri() + "/")
    good = replace(CIFAR["cifar10"], md5=md5)
    monkeypatch.setitem(CIFAR, "cifar10", good)
    out = datasets.download_archive("cifar10", tmp_path / "raw" / "cifar-10-python.tar.gz")
    assert file_md5(out) == md5
    monkeypatch.setitem(CIFAR, "cifar10", replace(good, md5="0" * 32))
    target = tmp_path / "raw2" / "cifar-10-python.tar.gz"
    with pytest.raises(DatasetError, match=f"has md5 {md5}, expected 0000"):
        datasets.download_archive("cifar10", target)
    assert list(target.parent.iterdir()) == []
