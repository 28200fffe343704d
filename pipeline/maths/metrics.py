"""Geometry measures of representations, pure numpy: cosines, the simplex, NC1, nearest class
means, iterations-to-fit, and the streaming accumulator the geometry stage feeds batch by batch.
Each is checked against a closed form or a naive loop in tests/test_geometry.py."""

from __future__ import annotations

import math

import numpy as np

from pipeline.maths.collapse import collapse_measures
from pipeline.maths.imbalance import minority_classes
from pipeline.maths.simplex import simplex_gram


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
    predicted. Ties go to the lowest class index (as argmax does in pipeline.stages.train)."""
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


def iterations_held_fit(iterations, accuracies, threshold: float) -> int:
    """Iterations over which the fit was held at the end of training: from the first
    evaluation of the final unbroken stretch with accuracy >= threshold to the last
    evaluation; 0 when the last evaluation is below the threshold (or the log is empty).

    The terminal phase the paper's geometry claims are about is zero training error held
    while training goes on; a run that fits at its last evaluation, or loses the fit and
    regains it late, has not been in it for long. Rows in the log's order; a NaN accuracy
    never counts as fitted (as in :func:`iterations_to_fit`).
    """
    it = np.asarray(iterations, dtype=np.int64)
    fitted = np.asarray(accuracies, dtype=np.float64) >= threshold
    if it.size == 0 or not fitted[-1]:
        return 0
    misses = np.flatnonzero(~fitted)
    first = misses[-1] + 1 if misses.size else 0
    return int(it[-1] - it[first])


def evaluation_interval(iterations) -> int:
    """The largest step between consecutive evaluations, counting from iteration 0: the
    grain of :func:`iterations_to_fit` (a fit time is known only to within it)."""
    it = np.asarray(iterations, dtype=np.int64)
    return int(np.diff(np.concatenate([[0], it])).max()) if it.size else 0


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
        # per test class: samples, and those the class-mean classifier / the head got right
        self.test_by_class = {name: np.zeros(num_classes, dtype=np.int64)
                              for name in ("total", "ncm", "head")}

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
        k = self.num_classes
        self.test_by_class["total"] += np.bincount(labels, minlength=k)
        self.test_by_class["ncm"] += np.bincount(labels[pred == labels], minlength=k)
        if self.head is not None:
            pred_head = np.argmax(z @ self.head.T, axis=1)  # (n, h) @ (h, K) -> (n, K)
            self.correct["test_head"] += int(np.sum(pred_head == labels))
            self.test_by_class["head"] += np.bincount(labels[pred_head == labels], minlength=k)
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
        out.update(self.group_results())
        return out

    def group_results(self) -> dict:
        """The class-imbalance view (docs/theory.md, "Class imbalance"): per test class the
        class-mean classifier's accuracy (a list, in metrics.json only), and by class group
        (the majority and the minority of pipeline/maths/imbalance.py, also for a balanced run,
        the rho = 1 point of a sweep): mean per-class test accuracy, and the mean cosines
        within and across the groups of the centred class means and of the head rows (minority
        collapse: minority head rows, or means, whose cosine goes to 1)."""
        minority = minority_classes(self.num_classes)
        total = self.test_by_class["total"]
        with np.errstate(invalid="ignore", divide="ignore"):
            ncm = np.where(total > 0, self.test_by_class["ncm"] / total, np.nan)
            head = np.where(total > 0, self.test_by_class["head"] / total, np.nan)
        out: dict = {"test_accuracy_by_class": [None if np.isnan(a) else float(a) for a in ncm]}
        for group, mask in (("majority", ~minority), ("minority", minority)):
            out[f"test_accuracy_{group}"] = _finite_mean(ncm[mask])
            out[f"test_accuracy_head_{group}"] = (_finite_mean(head[mask])
                                                  if self.head is not None else None)
        # absent classes (all their training labels flipped away) have no mean: NaN rows,
        # whose pairs group_cosines skips
        means = np.where(self.present[:, None], self.means, np.nan)
        centred_means = means - np.nanmean(means, axis=0)
        for group, value in group_cosines(centred_means, minority).items():
            out[f"class_mean_cosine_{group}"] = value
        for group, value in (group_cosines(self.head, minority).items()
                             if self.head is not None else
                             dict.fromkeys(("majority", "minority", "across")).items()):
            out[f"head_cosine_{group}"] = value
        return out


# ------------------------------------------------------------------------------ file input
# ------------------------------------------------------------------------- class imbalance


def class_accuracies(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """(K,) float64: the fraction of class k's samples predicted as k (per-class recall), NaN
    for a class without samples. Under imbalance the overall accuracy is dominated by the
    majority; this is what shows a minority that has collapsed (accuracy near 0)."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape or target.ndim != 1:
        raise ValueError(
            f"class accuracies: pred {pred.shape} and target {target.shape} must be equal 1-D"
        )
    if target.size and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"class accuracies: targets must lie in [0, {num_classes}), got range "
                         f"[{target.min()}, {target.max()}]")
    target = target.astype(np.int64)
    total = np.bincount(target, minlength=num_classes)  # (K,)
    correct = np.bincount(target[pred == target], minlength=num_classes)  # (K,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / total, np.nan)


def _finite_mean(values: np.ndarray) -> float:
    """Mean of the non-NaN entries; NaN (not a warning) when there are none."""
    v = values[~np.isnan(values)]
    return float(v.mean()) if v.size else math.nan


def group_cosines(vectors: np.ndarray, minority: np.ndarray) -> dict[str, float]:
    """Mean pairwise cosine of the rows of ``vectors`` (K, h) within the majority rows, within
    the minority rows (``minority`` (K,) bool, e.g. pipeline.maths.imbalance.minority_classes),
    and across the two: keys "majority", "minority", "across".

    Pass centred class means (pipeline.maths.collapse.centred: minus the unweighted mean of
    the class means, so that a regular simplex stays centred whatever the class sizes) or head
    rows. On a regular simplex all three are -1/(K-1); under imbalance the optimum moves off it
    (docs/theory.md, "Class imbalance"), and these three numbers say which way. Pairs with a
    zero row are skipped; a value is NaN when it has no pair (a group of < 2 rows).
    """
    v = np.asarray(vectors, dtype=np.float64)
    minority = np.asarray(minority)
    if v.ndim != 2 or minority.dtype != bool or minority.shape != (v.shape[0],):
        raise ValueError(f"group cosines: need vectors (K, h) and a (K,) bool minority mask, "
                         f"got {v.shape} and {minority.shape} {minority.dtype}")
    across = _unit_rows(v[~minority]) @ _unit_rows(v[minority]).T  # (K_maj, h) @ (h, K_min)
    return {
        "majority": _finite_mean(pairwise_cosines(v[~minority])),
        "minority": _finite_mean(pairwise_cosines(v[minority])),
        "across": _finite_mean(np.clip(across, -1.0, 1.0).ravel()),
    }
