"""Stage ``geometry``: how close one run's representations are to the collapsed simplex.

Everything is measured on the TRAIN split, with class membership given by the labels the
model was trained on (``noisy_label``), in float64. With K classes, N training samples z_i
of dimension h and class means mu_k:

- Class-mean cosines: cos(mu_i, mu_j) for all pairs i < j. At the optimum of both losses
  (docs/paper.md) the means are a regular simplex, so every pair has cosine -1/(K-1)
  (``simplex_cosine``); ``class_mean_cosine_deviation`` is the mean |cos - (-1/(K-1))|.
- Sample cosines: cos(z_i, mu_{y_i}), one per training sample; 1 when classes collapse.
- Class-mean norms |mu_k|: equal on the simplex, so ``class_mean_norm_cv`` (std/mean) is 0.
- Head cosines (ce, ce_fixed): cos(w_i, w_j), i < j, over the rows of the linear head, and
  ``head_class_mean_alignment`` = mean_k cos(w_k, mu_k) (1 when head and means coincide in
  direction; the paper's "self-duality").
- NC1 (Papyan et al. 2020): tr(Sigma_W Sigma_B^+) / K with
  Sigma_W = 1/N sum_i (z_i - mu_{y_i})(z_i - mu_{y_i})^T and
  Sigma_B = 1/K sum_k (mu_k - mu_G)(mu_k - mu_G)^T, mu_G the mean of the class means:
  within-class spread measured in units of between-class spread; 0 at collapse.
- Simplex Gram distance: ||G - G*||_F / ||G*||_F with G the Gram matrix of the class means
  scaled to unit norm and G* = K/(K-1) I - 1/(K-1) 11^T (pipeline.simplex.simplex_gram).
  0 on the simplex, 1/sqrt(K) for orthogonal means, sqrt(K) when all means coincide.
- Accuracies recomputed from the embeddings: nearest class mean (argmin_k |z - mu_k|, means
  from the training embeddings by noisy label) on train (vs noisy and clean labels) and
  test; the head's argmax of z W^T on test and on train (vs noisy labels).
- From the training log: the last row's loss and iteration, and ``iterations_to_fit``: the
  iteration of the first evaluation whose noisy-label train accuracy reaches
  ``geometry.fit_threshold`` (None if none does).

Classes with no training sample (possible with few samples and heavy label noise) have no
mean: they are left out of every class-mean statistic (cosines, norms, NC1 with K the number
of present classes, the Gram distance against the matching principal block of G*) and are
never predicted by the class-mean classifier; ``num_classes_present`` says how many remain.
A cosine involving a zero vector is undefined: it is NaN in the functions below, null in
cosines.parquet, and left out of the summary statistics. No NaN reaches metrics.json: a
statistic that cannot be computed is None there.

The embeddings are streamed in record batches, in two passes (class sums and counts; then
within-class scatter, cosines to the means and accuracies), so memory stays O(chunk * h +
h^2 + N) whatever the dataset size: no N x N or N x K matrix is ever built.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import schemas
from pipeline.collapse import collapse_measures, linear_probe
from pipeline.io import (
    InputError,
    check_columns,
    read_metadata,
    read_parquet,
    write_json,
    write_parquet,
)
from pipeline.simplex import simplex_gram

log = logging.getLogger(__name__)

BATCH_SIZE = 8192  # rows per record batch: ~ 8192 * 512 * 8 B = 32 MiB of float64 at h=512
HEAD_MODELS = ("ce", "ce_fixed")  # models with a linear head; supcon has none

COSINE_KINDS = schemas.COSINE_KINDS


# --------------------------------------------------------------------------- pure functions


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm; rows of norm 0 become NaN (their direction is undefined)."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)  # (M, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, v / norms, np.nan)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(a_i, b_i) for paired rows of two (M, h) arrays; NaN where a row has norm 0."""
    # Clipped: rounding can put |cos| a hair above 1, which would read as a bug downstream.
    cos = np.einsum("ij,ij->i", _unit_rows(a), _unit_rows(b))  # (M, h), (M, h) -> (M,)
    return np.clip(cos, -1.0, 1.0)


def pairwise_cosines(vectors: np.ndarray) -> np.ndarray:
    """cos(v_i, v_j) for all i < j of an (M, h) array, as a 1-D array of M(M-1)/2 values in
    row-major order (0,1), (0,2), ..., (1,2), ...; NaN for pairs with a zero vector."""
    unit = _unit_rows(vectors)
    gram = unit @ unit.T  # (M, h) @ (h, M) -> (M, M); M = K is small
    i, j = np.triu_indices(unit.shape[0], k=1)
    return np.clip(gram[i, j], -1.0, 1.0)


def simplex_cosine(num_classes: int) -> float:
    """The pairwise cosine of a regular simplex of K vertices: -1/(K-1)."""
    return -1.0 / (num_classes - 1)


def nc1(within_scatter: np.ndarray, means: np.ndarray, counts: np.ndarray) -> float:
    """tr(Sigma_W Sigma_B^+) / K over the classes with counts > 0.

    within_scatter: (h, h) sum over training samples of (z_i - mu_{y_i})(z_i - mu_{y_i})^T
    (not yet divided by N); means: (K, h) class means (rows of empty classes are ignored);
    counts: (K,) samples per class. NaN when fewer than two classes are present or all
    present means coincide (Sigma_B = 0: no between-class spread to measure against).

    Pseudo-inverse: Sigma_B has rank <= K-1 < h in general, so its null space must be cut
    off, not inverted. ``hermitian=True`` because Sigma_B is symmetric PSD (eigh-based: the
    exact zero eigenvalues stay symmetric and real); the cut-off ``rtol = max(h, K) * eps``
    relative to the largest eigenvalue is the rank tolerance of numpy.linalg.matrix_rank.
    numpy's legacy default rcond = 1e-15 lies below the rounding noise of a (h, h) float64
    matrix, so it would invert noise eigenvalues and make NC1 explode at large h.
    """
    counts = np.asarray(counts)
    present = counts > 0
    k = int(present.sum())
    if k < 2:
        return math.nan
    n = counts[present].sum()
    mu = np.asarray(means, dtype=np.float64)[present]  # (K', h)
    centred = mu - mu.mean(axis=0)  # (K', h): mu_k - mu_G
    sigma_b = centred.T @ centred / k  # (h, K') @ (K', h) -> (h, h)
    if not np.any(sigma_b):
        return math.nan
    sigma_w = np.asarray(within_scatter, dtype=np.float64) / n  # (h, h)
    tol = max(sigma_b.shape[0], k) * np.finfo(np.float64).eps
    sigma_b_pinv = np.linalg.pinv(sigma_b, rtol=tol, hermitian=True)  # (h, h)
    # tr(A B) = sum_ij A_ij B_ji, without forming the product.
    return float(np.sum(sigma_w * sigma_b_pinv.T)) / k


def simplex_gram_distance(means: np.ndarray, num_classes: int | None = None) -> float:
    """||G - G*||_F / ||G*||_F for the (K', h) class means ``means``.

    G is the Gram matrix of the means scaled to unit norm. ``num_classes`` (default K') is
    the K of the target simplex: when classes are missing, the comparison is against the
    K' x K' principal block of the K-class G* (diagonal 1, off-diagonal -1/(K-1)), which is
    the Gram matrix the present means have on the full simplex. NaN for a zero-norm mean.
    """
    unit = _unit_rows(means)
    m = unit.shape[0]
    k = m if num_classes is None else num_classes
    if m < 2 or k < m:
        raise ValueError(f"need 2 <= present classes <= num_classes, got {m} and {k}")
    gram = unit @ unit.T  # (K', h) @ (h, K') -> (K', K')
    target = simplex_gram(k)[:m, :m]
    return float(np.linalg.norm(gram - target) / np.linalg.norm(target))


def nearest_class_mean(z: np.ndarray, means: np.ndarray, present: np.ndarray) -> np.ndarray:
    """argmin_k |z - mu_k| for each row of z (n, h); classes with present == False are never
    predicted. Ties go to the lowest class index (as argmax does in pipeline.train)."""
    mu = np.where(present[:, None], means, 0.0)  # (K, h): no NaN rows in the product
    # |z - mu|^2 = |z|^2 - 2 z.mu + |mu|^2; |z|^2 is the same for every k, so drop it.
    scores = z @ mu.T - 0.5 * np.sum(mu * mu, axis=1)  # (n, h) @ (h, K) -> (n, K)
    scores[:, ~present] = -np.inf
    return np.argmax(scores, axis=1)


def iterations_to_fit(iterations, accuracies, threshold: float) -> int | None:
    """Iteration of the first evaluation with accuracy >= threshold; None if there is none.

    Rows are taken in the given order (the training log's, increasing iteration); a NaN
    accuracy never counts as fitted.
    """
    acc = np.asarray(accuracies, dtype=np.float64)
    hits = np.flatnonzero(acc >= threshold)
    return int(np.asarray(iterations)[hits[0]]) if hits.size else None


def summary(values: np.ndarray, prefix: str, stats=("mean", "std", "min", "max")) -> dict:
    """``{prefix}_{stat}`` of the finite entries of ``values`` (std with ddof 0); None for
    every stat when there is no finite entry."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    funcs = {"mean": np.mean, "std": np.std, "min": np.min, "max": np.max}
    return {f"{prefix}_{s}": float(funcs[s](v)) if v.size else None for s in stats}


# -------------------------------------------------------------------- streaming accumulator


class GeometryAccumulator:
    """Two-pass streaming statistics of one run's embeddings.

    Pass 1: :meth:`add_class_sums` on every training chunk, then :meth:`finish_means`.
    Pass 2: :meth:`add_train` on every training chunk (in file order: the per-sample cosines
    are kept in that order) and :meth:`add_test` on every test chunk. Then :meth:`results`.
    """

    def __init__(self, num_classes: int, dim: int, head: np.ndarray | None = None):
        if num_classes < 2:
            raise ValueError(f"geometry needs at least 2 classes, got {num_classes}")
        if head is not None and head.shape != (num_classes, dim):
            raise ValueError(f"head has shape {head.shape}, expected {(num_classes, dim)}")
        self.num_classes = num_classes
        self.dim = dim
        self.head = None if head is None else np.asarray(head, dtype=np.float64)  # (K, h)
        self.sums = np.zeros((num_classes, dim))  # (K, h)
        self.counts = np.zeros(num_classes, dtype=np.int64)  # (K,)
        self.means: np.ndarray | None = None
        self.present: np.ndarray | None = None
        self.within_scatter = np.zeros((dim, dim))  # (h, h), summed over samples
        self.sample_cosines: list[np.ndarray] = []  # one (n,) array per training chunk
        self.correct = dict.fromkeys(
            ("train_ncm_noisy", "train_ncm_clean", "train_head_noisy", "test_ncm", "test_head",
             "train_head_agrees_ncm"),
            0,
        )
        self.num_train = 0
        self.num_test = 0

    def add_class_sums(self, z: np.ndarray, noisy: np.ndarray) -> None:
        """Pass 1: z (n, h) training embeddings, noisy (n,) their training labels."""
        np.add.at(self.sums, noisy, z)  # (K, h) += rows of z by label
        self.counts += np.bincount(noisy, minlength=self.num_classes)

    def finish_means(self) -> None:
        if self.counts.sum() == 0:
            raise ValueError("no training samples: class means are undefined")
        self.present = self.counts > 0
        with np.errstate(invalid="ignore"):
            self.means = self.sums / self.counts[:, None]  # (K, h); NaN rows when empty

    def add_train(self, z: np.ndarray, noisy: np.ndarray, clean: np.ndarray) -> None:
        """Pass 2 on training rows: within-class scatter, cosines to own mean, accuracies."""
        assert self.means is not None, "finish_means() must run between the two passes"
        mu = self.means[noisy]  # (n, h): each sample's class mean (its class is present)
        d = z - mu  # (n, h)
        self.within_scatter += d.T @ d  # (h, n) @ (n, h) -> (h, h)
        self.sample_cosines.append(row_cosines(z, mu))
        pred = nearest_class_mean(z, self.means, self.present)
        self.correct["train_ncm_noisy"] += int(np.sum(pred == noisy))
        self.correct["train_ncm_clean"] += int(np.sum(pred == clean))
        if self.head is not None:
            pred_head = np.argmax(z @ self.head.T, axis=1)  # (n, h) @ (h, K) -> (n, K)
            self.correct["train_head_noisy"] += int(np.sum(pred_head == noisy))
            self.correct["train_head_agrees_ncm"] += int(np.sum(pred_head == pred))  # NC4
        self.num_train += z.shape[0]

    def add_test(self, z: np.ndarray, labels: np.ndarray) -> None:
        """Pass 2 on test rows: class-mean and head accuracy against the test labels."""
        assert self.means is not None, "finish_means() must run between the two passes"
        pred = nearest_class_mean(z, self.means, self.present)
        self.correct["test_ncm"] += int(np.sum(pred == labels))
        if self.head is not None:
            pred_head = np.argmax(z @ self.head.T, axis=1)  # (n, h) @ (h, K) -> (n, K)
            self.correct["test_head"] += int(np.sum(pred_head == labels))
        self.num_test += z.shape[0]

    def cosines(self) -> dict[str, np.ndarray]:
        """The cosine distributions, by kind (see COSINE_KINDS); head_weights empty if no
        head."""
        means = self.means[self.present]  # (K', h)
        head = pairwise_cosines(self.head) if self.head is not None else np.zeros(0)
        samples = np.concatenate(self.sample_cosines) if self.sample_cosines else np.zeros(0)
        return {
            "class_means": pairwise_cosines(means),
            "sample_to_class_mean": samples,
            "head_weights": head,
        }

    def results(self) -> dict:
        """The summary metrics (floats may be NaN here; the stage turns NaN into None)."""
        k = self.num_classes
        means = self.means[self.present]  # (K', h)
        k_present = means.shape[0]
        cos = self.cosines()
        target = simplex_cosine(k)
        out: dict = {"num_train": self.num_train, "num_test": self.num_test}
        out["num_classes_present"] = k_present
        out.update(summary(cos["class_means"], "class_mean_cosine"))
        out["simplex_cosine"] = target
        dev = np.abs(cos["class_means"] - target)
        out["class_mean_cosine_deviation"] = summary(dev, "d", ("mean",))["d_mean"]
        out.update(summary(cos["sample_to_class_mean"], "sample_cosine", ("mean", "std", "min")))
        norms = np.linalg.norm(means, axis=1)  # (K',)
        out.update(summary(norms, "class_mean_norm", ("mean", "std")))
        mean_norm = out["class_mean_norm_mean"]
        out["class_mean_norm_cv"] = (
            out["class_mean_norm_std"] / mean_norm if mean_norm else None
        )
        if self.head is not None:
            out.update(summary(cos["head_weights"], "head_cosine"))
            align = row_cosines(self.head[self.present], means)  # (K',)
            out["head_class_mean_alignment"] = summary(align, "a", ("mean",))["a_mean"]
        else:
            out.update(dict.fromkeys(summary(np.zeros(0), "head_cosine"), None))
            out["head_class_mean_alignment"] = None
        out["nc1"] = nc1(self.within_scatter, self.means, self.counts)
        out["simplex_gram_distance"] = (
            simplex_gram_distance(means, k) if k_present >= 2 else None
        )
        n, m = self.num_train, self.num_test
        c = self.correct
        has_head = self.head is not None
        out["train_accuracy_noisy"] = c["train_ncm_noisy"] / n
        out["train_accuracy_clean"] = c["train_ncm_clean"] / n
        out["train_accuracy_head_noisy"] = c["train_head_noisy"] / n if has_head else None
        out["test_accuracy_class_mean"] = c["test_ncm"] / m if m else None
        out["test_accuracy_head"] = c["test_head"] / m if has_head and m else None
        head_present = self.head[self.present] if has_head else None
        out.update(collapse_measures(means, head_present) if k_present >= 2 else {})
        out["nc4_head_ncm_agreement"] = c["train_head_agrees_ncm"] / n if has_head else None
        return out


# ------------------------------------------------------------------------------ file input


def _schema(path: Path) -> pa.Schema:
    if not path.exists():
        raise InputError(f"{path}: missing input file")
    try:
        return pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: unreadable or truncated Parquet file ({e})") from e


def _vector_dim(schema: pa.Schema, column: str, path: Path) -> int:
    """h of a fixed-size list<float32>[h] column, after checking it is one."""
    if column not in schema.names:
        raise InputError(f"{path}: missing column {column!r} (has {schema.names})")
    dtype = schema.field(column).type
    if not (pa.types.is_fixed_size_list(dtype) and dtype.value_type.equals(pa.float32())):
        raise InputError(
            f"{path}: column {column!r} has type {dtype}, expected fixed_size_list<float>[h]"
        )
    return dtype.list_size


def _train_config(path: Path) -> dict:
    """The run's TrainConfig dict from the embeddings' metadata, with the keys used here."""
    try:
        cfg = read_metadata(path)["train_config"]
        for key in ("dataset", "noise_fraction", "seed"):
            cfg[key]  # noqa: B018 -- presence check
        for key in ("model", "num_classes", "representation_dim"):
            cfg["model"][key]  # noqa: B018
    except (KeyError, TypeError) as e:
        raise InputError(f"{path}: metadata 'train_config' lacks {e}") from e
    return cfg


def _read_head(path: Path, dim: int, embeddings: Path, num_classes: int, model: str):
    """(K, h) float64 head rows ordered by class, or None when the file has no rows."""
    head_dim = _vector_dim(_schema(path), "weight", path)
    if head_dim != dim:
        raise ValueError(
            f"head {path} has weight dimension {head_dim}, but embeddings {embeddings} have "
            f"dimension {dim}"
        )
    table = read_parquet(path, {f.name: f.type for f in schemas.head(dim)})
    if table.num_rows == 0:
        if model in HEAD_MODELS:
            raise InputError(f"{path}: model {model!r} has a head, but the file has no rows")
        return None
    if model not in HEAD_MODELS:
        raise InputError(f"{path}: model {model!r} has no head, but the file has rows")
    classes = table["class"].to_numpy(zero_copy_only=False)
    if table["weight"].null_count or not np.array_equal(np.sort(classes), np.arange(num_classes)):
        raise InputError(
            f"{path}: expected one non-null weight per class 0..{num_classes - 1}, "
            f"got classes {classes.tolist()}"
        )
    flat = pc.list_flatten(table["weight"]).to_numpy()
    weights = flat.reshape(-1, dim).astype(np.float64)  # (K, h), rows in file order
    return weights[np.argsort(classes)]


def _batches(path: Path, dim: int, num_classes: int, batch_size: int) -> Iterator[tuple]:
    """Yield (is_train, z, noisy, clean) per record batch: masks and labels as numpy arrays,
    z (n, h) float64; every value checked (split, labels in range, finite embeddings)."""
    columns = ["split", "clean_label", "noisy_label", "embedding"]
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns):
            split = batch.column("split")
            is_train = pc.fill_null(pc.equal(split, "train"), False).to_numpy(
                zero_copy_only=False
            )
            is_test = pc.fill_null(pc.equal(split, "test"), False).to_numpy(zero_copy_only=False)
            if not np.all(is_train | is_test):
                bad = pc.unique(pc.filter(split, pa.array(~(is_train | is_test)))).to_pylist()
                raise InputError(f"{path}: split must be 'train' or 'test', found {bad}")
            emb = batch.column("embedding")
            if emb.null_count:
                raise InputError(f"{path}: {emb.null_count} null embeddings")
            z = pc.list_flatten(emb).to_numpy().reshape(-1, dim).astype(np.float64)  # (n, h)
            if not np.all(np.isfinite(z)):
                raise InputError(f"{path}: embeddings contain NaN or infinite values")
            clean = pc.fill_null(batch.column("clean_label"), -1).to_numpy()
            noisy = pc.fill_null(batch.column("noisy_label"), -1).to_numpy()
            for name, labels, rows in (("clean_label", clean, slice(None)),
                                       ("noisy_label", noisy, is_train)):
                values = labels[rows]
                if values.size and (values.min() < 0 or values.max() >= num_classes):
                    raise InputError(
                        f"{path}: column {name!r} must be in 0..{num_classes - 1} (and not "
                        f"null) on {'all' if name == 'clean_label' else 'train'} rows, found "
                        f"values in {values.min()}..{values.max()} (null read as -1)"
                    )
            yield is_train, z, noisy, clean
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: unreadable or truncated Parquet file ({e})") from e


def _read_train_log(path: Path) -> dict:
    table = read_parquet(path, {f.name: f.type for f in schemas.TRAIN_LOG})
    if table.num_rows == 0:
        raise InputError(f"{path}: training log has no rows")
    iterations = table["iteration"].to_numpy(zero_copy_only=False)
    if np.any(np.diff(iterations) <= 0):
        raise InputError(f"{path}: iterations are not strictly increasing")
    return {
        "iteration": iterations,
        "train_accuracy_noisy": table["train_accuracy_noisy"].to_numpy(zero_copy_only=False),
        **{name: table[name].to_numpy(zero_copy_only=False)
           for name in ("loss", "supcon_optimum", "supcon_gap", "loss_gap")},
    }


# ----------------------------------------------------------------------------------- stage


def _json_value(value):
    """Plain Python scalars for JSON; NaN and infinities become None."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def cosines_table(cosines: dict[str, np.ndarray]) -> pa.Table:
    """The COSINES table: kinds in COSINE_KINDS order, values in computation order; an
    undefined cosine (NaN) is written as null."""
    kinds, values = [], []
    for kind in COSINE_KINDS:
        v = np.asarray(cosines[kind], dtype=np.float64)
        kinds.append(pa.array(np.full(v.shape[0], kind, dtype=object), pa.string()))
        values.append(pa.array(v, pa.float64(), mask=np.isnan(v)))
    return pa.table(
        {"kind": pa.concat_arrays(kinds), "value": pa.concat_arrays(values)},
        schema=schemas.COSINES,
    )


def probe_accuracies(embeddings: Path, dim: int, num_classes: int, batch_size: int,
                     settings: dict) -> dict:  # fmt: skip
    """The linear probe (pipeline.collapse.linear_probe) of one run: fit on the training
    embeddings with the labels trained on; accuracy on train (noisy and clean) and test.

    Unlike the streaming statistics it holds the training embeddings in memory: N x h
    float64 (245 MB at CIFAR scale, N = 60,000, h = 512), what L-BFGS needs anyway.
    """
    parts = list(_batches(embeddings, dim, num_classes, batch_size))
    is_train = np.concatenate([p[0] for p in parts])
    z = np.concatenate([p[1] for p in parts])  # (N + M, h)
    noisy, clean = (np.concatenate([p[i] for p in parts]) for i in (2, 3))
    predict, iterations, converged = linear_probe(
        z[is_train], noisy[is_train], num_classes, float(settings["inverse_regularisation"]),
        int(settings["max_iterations"]),
    )
    train_pred = predict(z[is_train])
    test = ~is_train
    return {
        "probe_train_accuracy_noisy": float(np.mean(train_pred == noisy[is_train])),
        "probe_train_accuracy_clean": float(np.mean(train_pred == clean[is_train])),
        "probe_test_accuracy": float(np.mean(predict(z[test]) == clean[test]))
        if test.any() else None,
        "probe_iterations": iterations,
        "probe_converged": converged,
    }


def measure_geometry(
    params: dict,
    *,
    dataset: str,
    model: str,
    augmentation: str,
    noise: float,
    seed: int,
    embeddings: Path,
    head: Path,
    train_log: Path,
    metrics: Path,
    cosines: Path,
    batch_size: int = BATCH_SIZE,
) -> dict:
    """Measure one run's geometry; write ``metrics`` (JSON) and ``cosines`` (Parquet).

    ``params`` is ``{"geometry": {"fit_threshold": ...}}``. Returns the metrics dict.
    """
    embeddings, head, train_log = Path(embeddings), Path(head), Path(train_log)
    fit_threshold = float(params["geometry"]["fit_threshold"])
    if not 0 < fit_threshold <= 1:
        raise ValueError(f"params: geometry.fit_threshold must be in (0, 1], got {fit_threshold}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    # Validate everything before the first pass, so a bad file fails fast and by name.
    schema = _schema(embeddings)
    dim = _vector_dim(schema, "embedding", embeddings)
    check_columns(schema, {f.name: f.type for f in schemas.embeddings(dim)}, embeddings)
    cfg = _train_config(embeddings)
    k = int(cfg["model"]["num_classes"])
    expected = (dataset, model, augmentation, float(noise), int(seed))
    found = (cfg["dataset"], cfg["model"]["model"], cfg.get("augmentation"),
             float(cfg["noise_fraction"]), cfg["seed"])
    if found != expected:
        raise InputError(
            f"{embeddings}: made by run (dataset, model, augmentation, noise, seed) = {found}, "
            f"expected {expected}"
        )
    if cfg["model"]["representation_dim"] != dim:
        raise InputError(
            f"{embeddings}: embeddings have dimension {dim}, train_config says "
            f"representation_dim {cfg['model']['representation_dim']}"
        )
    if k < 2:
        raise InputError(f"{embeddings}: train_config num_classes must be >= 2, got {k}")
    weights = _read_head(head, dim, embeddings, k, model)
    train_rows = _read_train_log(train_log)

    acc = GeometryAccumulator(k, dim, weights)
    for is_train, z, noisy, _ in _batches(embeddings, dim, k, batch_size):
        acc.add_class_sums(z[is_train], noisy[is_train])
    if acc.counts.sum() == 0:
        raise InputError(f"{embeddings}: no training rows")
    acc.finish_means()
    for is_train, z, noisy, clean in _batches(embeddings, dim, k, batch_size):
        acc.add_train(z[is_train], noisy[is_train], clean[is_train])
        acc.add_test(z[~is_train], clean[~is_train])
    probe = probe_accuracies(embeddings, dim, k, batch_size, params["geometry"]["probe"])

    result = {
        "dataset": cfg["dataset"],
        "model": model,
        "augmentation": augmentation,
        "noise_fraction": float(cfg["noise_fraction"]),
        "seed": int(cfg["seed"]),
        "num_classes": k,
        "representation_dim": dim,
        "fit_threshold": fit_threshold,
        **acc.results(),
        **probe,
        "final_loss": train_rows["loss"][-1],
        # gap to the optimum at the end of training (schemas.TRAIN_LOG explains each)
        "supcon_optimum": train_rows["supcon_optimum"][-1],
        "final_supcon_gap": train_rows["supcon_gap"][-1],
        "final_loss_gap": train_rows["loss_gap"][-1],
        "final_iteration": train_rows["iteration"][-1],
        "iterations_to_fit": iterations_to_fit(
            train_rows["iteration"], train_rows["train_accuracy_noisy"], fit_threshold
        ),
    }
    result = {key: _json_value(v) for key, v in result.items()}
    write_parquet(cosines_table(acc.cosines()), cosines, metadata={"train_config": cfg})
    write_json(result, metrics)
    log.info(
        "geometry %s/%s noise %s seed %s: class-mean cosine %s (simplex %.4f), nc1 %s",
        cfg["dataset"], model, cfg["noise_fraction"], cfg["seed"],
        result["class_mean_cosine_mean"], result["simplex_cosine"], result["nc1"],
    )
    return result
