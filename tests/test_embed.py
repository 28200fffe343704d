"""Stage embed: every sample's representation and the head, from a run's checkpoint."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from runs import run, run_of

from pipeline.infra import schemas
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
