"""Arrow schemas of every Parquet artifact, defined once.

Writers build tables with these schemas; readers check them (pipeline.infra.io.read_parquet), so a
truncated or schema-mismatched upstream file stops the stage with an error naming it.
"""

from __future__ import annotations

import pyarrow as pa

# noisy_labels: one row per training sample.
LABELS = pa.schema(
    [
        ("index", pa.int64()),  # row of the sample in the dataset's training split
        ("clean_label", pa.int64()),
        ("noisy_label", pa.int64()),  # the label trained on
        ("flipped", pa.bool_()),  # noisy_label != clean_label
    ]
)

# train: one row per evaluation (every eval_every iterations, and after the last one).
TRAIN_LOG = pa.schema(
    [
        ("iteration", pa.int64()),  # number of SGD steps done when the row was taken
        ("learning_rate", pa.float64()),  # of the last step
        ("loss", pa.float64()),  # mean training loss over the steps since the last row
        ("supcon_loss", pa.float64()),  # same window; ce models: tracked on every 5th step
        # supcon's optimum: its exact expectation at the collapsed unit-sphere simplex under
        # the training sampler (theory.expected_supcon_optimum; noisy label frequencies)
        ("supcon_optimum", pa.float64()),
        ("supcon_gap", pa.float64()),  # supcon_loss - supcon_optimum (>= 0 in expectation)
        # loss minus its bound: for supcon the supcon gap; for ce models the CE bound at the
        # current feature norms and head (theory.ce_bound_at_norms), since their features
        # are not norm-constrained and the unconstrained infimum is 0
        ("loss_gap", pa.float64()),
        ("train_accuracy_noisy", pa.float64()),  # model's own classifier vs labels trained on
        ("train_accuracy_clean", pa.float64()),  # ... vs the clean labels
        ("test_accuracy_class_mean", pa.float64()),  # nearest class mean (all models)
        ("test_accuracy_head", pa.float64()),  # head argmax (ce, ce_fixed); null for supcon
    ]
)



def embeddings(dim: int) -> pa.Schema:
    """embed: one row per sample of both splits, train first, each in index order."""
    return pa.schema(
        [
            ("index", pa.int64()),  # row within its split
            ("split", pa.string()),  # "train" or "test"
            ("clean_label", pa.int64()),
            ("noisy_label", pa.int64()),  # label trained on; null for test rows
            ("embedding", pa.list_(pa.float32(), dim)),  # the representation (h,)
        ]
    )


def head(dim: int) -> pa.Schema:
    """embed: one row per class with the head's weight vector; no rows for supcon."""
    return pa.schema([("class", pa.int64()), ("weight", pa.list_(pa.float32(), dim))])


# geometry: the cosine distributions behind the summary numbers.
# The kinds of cosine in a run's cosines.parquet, in the order geometry writes them.
COSINE_KINDS = ("class_means", "sample_to_class_mean", "head_weights")

COSINES = pa.schema(
    [
        ("kind", pa.string()),  # class_means | sample_to_class_mean | head_weights
        ("value", pa.float64()),
    ]
)
