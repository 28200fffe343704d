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
  scaled to unit norm and G* = K/(K-1) I - 1/(K-1) 11^T (pipeline.maths.simplex.simplex_gram).
  0 on the simplex, 1/sqrt(K) for orthogonal means, sqrt(K) when all means coincide.
- Accuracies recomputed from the embeddings: nearest class mean (argmin_k |z - mu_k|, means
  from the training embeddings by noisy label) on train (vs noisy and clean labels) and
  test; the head's argmax of z W^T on test and on train (vs noisy labels).
- From the training log: the last row's loss and iteration, and ``iterations_to_fit``: the
  iteration of the first evaluation whose noisy-label train accuracy reaches
  ``geometry.fit_threshold`` (None if none does); ``iterations_held_fit``: how many
  iterations before the last one the fit has held unbroken (0 if the last row is not
  fitted); ``evaluation_interval``: the largest step between log rows, the grain of the fit
  time. Stage claims checks its regimes with the last two.

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

from pipeline.infra import inputs, schemas
from pipeline.infra.io import (
    InputError,
    check_columns,
    parquet_errors,
    read_metadata,
    read_parquet,
    write_json,
    write_parquet,
)
from pipeline.infra.runs import Run
from pipeline.maths.collapse import linear_probe
from pipeline.maths.metrics import (
    GeometryAccumulator,
    evaluation_interval,
    iterations_held_fit,
    iterations_to_fit,
)

log = logging.getLogger(__name__)

BATCH_SIZE = 8192  # rows per record batch: ~ 8192 * 512 * 8 B = 32 MiB of float64 at h=512
HEAD_MODELS = ("ce", "ce_fixed")  # models with a linear head; supcon and supcon_mv have none

COSINE_KINDS = schemas.COSINE_KINDS


# --------------------------------------------------------------------------- pure functions


def _schema(path: Path) -> pa.Schema:
    with parquet_errors(path):
        return pq.read_schema(path)


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


def _train_config(path: Path, meta: dict) -> dict:
    """The run's TrainConfig dict from the embeddings' metadata ``meta``, with the keys used
    here."""
    try:
        cfg = meta["train_config"]
        for key in ("dataset", "temperature", "batch_size", "noise_fraction", "seed"):
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
    with parquet_errors(path):
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


def check_run(path: Path, meta: dict, run: Run) -> None:
    """The file at ``path`` (metadata ``meta``: its ``train_config``) was made for ``run``."""
    try:
        found = Run.of_train_config(meta["train_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: metadata 'train_config' lacks {e}") from e
    if found != run:
        raise InputError(f"{path}: made by {found}, expected {run}")


def check_same_training(embeddings: Path, emb_meta: dict, head: Path, train_log: Path,
                        run: Run) -> None:
    """The head and the training log belong to ``run`` (like the embeddings, metadata
    ``emb_meta``) and to the same training as the embeddings: the head was extracted from the
    checkpoint the embeddings were (both record its md5), and the log was written beside that
    checkpoint (it records the md5 of the checkpoint its job wrote). Another training of the
    same run, e.g. under other params since, is refused by name."""
    for path in (head, train_log):
        meta = read_metadata(path)
        check_run(path, meta, run)
        inputs.check_same_source(embeddings, emb_meta, path, meta, "checkpoint",
                                 None if path == head else inputs.WRITTEN_WITH)


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
    if isinstance(value, list):  # per-class values
        return [_json_value(v) for v in value]
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
                     settings: dict) -> dict:
    """The linear probe (pipeline.maths.collapse.linear_probe) of one run: fit on the training
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
    run: Run,
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
    emb_meta = read_metadata(embeddings)
    cfg = _train_config(embeddings, emb_meta)
    k = int(cfg["model"]["num_classes"])
    check_run(embeddings, emb_meta, run)
    model = run.model
    if cfg["model"]["representation_dim"] != dim:
        raise InputError(
            f"{embeddings}: embeddings have dimension {dim}, train_config says "
            f"representation_dim {cfg['model']['representation_dim']}"
        )
    if k < 2:
        raise InputError(f"{embeddings}: train_config num_classes must be >= 2, got {k}")
    weights = _read_head(head, dim, embeddings, k, model)
    train_rows = _read_train_log(train_log)
    check_same_training(embeddings, emb_meta, head, train_log, run)

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
        **run.columns(),
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
        # the regime checks of stage claims: how long the fit was held, and the fit's grain
        "iterations_held_fit": iterations_held_fit(
            train_rows["iteration"], train_rows["train_accuracy_noisy"], fit_threshold
        ),
        "evaluation_interval": evaluation_interval(train_rows["iteration"]),
    }
    made_from = inputs.digests(embeddings=embeddings, head=head, train_log=train_log)
    result = {**{key: _json_value(v) for key, v in result.items()}, inputs.KEY: made_from}
    write_parquet(cosines_table(acc.cosines()), cosines,
                  metadata={"train_config": cfg, inputs.KEY: made_from})
    write_json(result, metrics)
    log.info(
        "geometry %s/%s noise %s seed %s: class-mean cosine %s (simplex %.4f), nc1 %s",
        cfg["dataset"], model, cfg["noise_fraction"], cfg["seed"],
        result["class_mean_cosine_mean"], result["simplex_cosine"], result["nc1"],
    )
    return result
