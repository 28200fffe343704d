"""Stage embed: every sample's representation and the head, from a run's checkpoint."""

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from runs import run, run_of

from pipeline.infra import io, schemas
from pipeline.infra.io import read_metadata
from pipeline.stages.embed import extract_embeddings


@pytest.mark.parametrize("model", ["supcon", "ce"])
def test_embed_writes_every_sample_and_the_head(tmp_path, small_params, labels, model):
    _, paths = run(tmp_path, small_params, labels, model)
    out = {"embeddings": tmp_path / "emb.parquet", "head": tmp_path / "head.parquet"}
    extract_embeddings(
        small_params, run=run_of(small_params, model),
        labels=labels, checkpoint=paths["checkpoint"], **out,
    )
    h = small_params["train"]["common"]["representation_dim"]
    table = pq.read_table(out["embeddings"])
    assert table.schema.remove_metadata().equals(schemas.embeddings(h))
    assert table.num_rows == 1797
    df = table.to_pandas()
    assert (df["split"] == "train").sum() == 1258
    assert df.loc[df.split == "test", "noisy_label"].isna().all()
    train_rows = df[df.split == "train"]
    assert train_rows["noisy_label"].tolist() == pq.read_table(labels)["noisy_label"].to_pylist()
    emb = np.stack(df["embedding"].to_numpy())
    if model == "supcon":  # supcon's representation lies on the unit sphere
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    meta = read_metadata(out["embeddings"])["train_config"]
    assert meta["model"]["model"] == model and meta["noise_fraction"] == 0.3
    head = pq.read_table(out["head"])
    assert head.num_rows == (0 if model == "supcon" else 10)
    first = out["embeddings"].read_bytes()
    extract_embeddings(
        small_params, run=run_of(small_params, model),
        labels=labels, checkpoint=paths["checkpoint"], **out,
    )
    assert out["embeddings"].read_bytes() == first


def test_embed_refuses_a_checkpoint_of_another_run(tmp_path, small_params, labels):
    _, paths = run(tmp_path, small_params, labels, "ce")
    with pytest.raises(ValueError, match=r"made for .*'ce'.*expected .*'supcon'"):
        extract_embeddings(
            small_params, run=run_of(small_params, "supcon"), labels=labels,
            checkpoint=paths["checkpoint"], embeddings=tmp_path / "e", head=tmp_path / "h",
        )


def test_embed_refuses_a_checkpoint_made_with_another_config(tmp_path, small_params, labels):
    _, paths = run(tmp_path, small_params, labels, "ce")
    small_params["train"]["common"]["representation_dim"] = 16
    with pytest.raises(ValueError, match=r"different config .*model.representation_dim: 32 in "
                       r"the checkpoint vs 16 now"):
        extract_embeddings(
            small_params, run=run_of(small_params, "ce"),
            labels=labels,
            checkpoint=paths["checkpoint"], embeddings=tmp_path / "e", head=tmp_path / "h",
        )
    assert not (tmp_path / "e").exists()


def test_embed_refuses_labels_of_the_same_run_made_since_training(tmp_path, small_params,
                                                                labels):
    """Issue 23: the labels file of the run, rewritten after training (same identity, same
    samples and clean labels, one noisy label moved: what regenerating under another noise
    draw gives): the checkpoint records the md5 it was trained on, so embed refuses."""
    _, paths = run(tmp_path, small_params, labels, "ce")
    trained_on = io.file_md5(labels)
    table = pq.read_table(labels)
    noisy = table["noisy_label"].to_numpy().copy()
    noisy[0] = (noisy[0] + 1) % 10
    meta = io.read_metadata(labels)
    io.write_parquet(table.set_column(table.schema.get_field_index("noisy_label"), "noisy_label",
                                      pa.array(noisy)).replace_schema_metadata(None),
                     labels, metadata=meta)
    out = {"embeddings": tmp_path / "e.parquet", "head": tmp_path / "h.parquet"}
    with pytest.raises(io.InputError, match=(
            rf"a.pt: made from labels with md5 {trained_on} \(field inputs.labels\), but "
            rf"{re.escape(str(labels))} has md5 {io.file_md5(labels)}")):
        extract_embeddings(small_params, run=run_of(small_params, "ce"), labels=labels,
                           checkpoint=paths["checkpoint"], **out)
    assert not out["embeddings"].exists() and not out["head"].exists()


def test_embeddings_and_head_record_the_checkpoint_and_labels(tmp_path, small_params, labels):
    _, paths = run(tmp_path, small_params, labels, "ce_fixed")
    out = {"embeddings": tmp_path / "e.parquet", "head": tmp_path / "h.parquet"}
    extract_embeddings(small_params, run=run_of(small_params, "ce_fixed"), labels=labels,
                       checkpoint=paths["checkpoint"], **out)
    made_from = {"checkpoint": io.file_md5(paths["checkpoint"]), "labels": io.file_md5(labels)}
    for path in out.values():
        assert io.read_metadata(path)["inputs"] == made_from
