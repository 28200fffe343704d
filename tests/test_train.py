"""Training and embedding stages on the real digits data, cut to a few iterations."""

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from runs import run, run_of

from pipeline.infra import schemas
from pipeline.infra.io import read_metadata
from pipeline.maths.simplex import regular_simplex
from pipeline.stages.train import (
    DivergenceError,
    TrainConfig,
    class_means,
    learning_rate,
    load_checkpoint,
    nearest_class_mean,
)


def config(params, model="ce"):
    return TrainConfig.from_params(params, run_of(params, model, noise_fraction=0.0))


def test_exponential_and_cosine_schedules(small_params):
    cfg = config(small_params)
    t, lr = cfg.iterations, cfg.learning_rate
    assert learning_rate(cfg, 0) == lr
    assert learning_rate(cfg, t // 2) == pytest.approx(lr * 0.5**5)
    assert learning_rate(cfg, t - 1) == pytest.approx(lr * (1 / t) ** 5)
    small_params["train"]["common"]["schedule"] = "cosine"
    cfg = config(small_params)
    assert learning_rate(cfg, t // 2) == pytest.approx(lr * 0.5)
    assert learning_rate(cfg, t // 4) == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi / 4)))


@pytest.mark.parametrize("model", ["supcon", "ce", "ce_fixed"])
def test_train_writes_log_and_checkpoint_deterministically(tmp_path, small_params, labels, model):
    table, paths = run(tmp_path, small_params, labels, model)
    common, (grid_iterations,) = small_params["train"]["common"], small_params["grid"]["iterations"]
    assert table.schema.equals(schemas.TRAIN_LOG)
    assert table["iteration"].to_pylist() == list(
        range(common["eval_every"], grid_iterations + 1, common["eval_every"])
    )
    log = table.to_pandas()
    assert log[["loss", "supcon_loss", "train_accuracy_noisy"]].notna().all().all()
    assert log["test_accuracy_head"].isna().all() == (model == "supcon")
    accuracies = log.filter(like="accuracy").fillna(0)
    assert ((accuracies >= 0) & (accuracies <= 1)).all().all()
    if model == "supcon":
        assert (log["loss"] == log["supcon_loss"]).all()

    cfg, state = load_checkpoint(paths["checkpoint"])
    assert cfg == TrainConfig.from_params(small_params, run_of(small_params, model))
    assert read_metadata(paths["train_log"])["train_config"] == cfg.to_dict()
    assert not any("bias" in k for k in state if k.startswith("head"))
    # same inputs and seed -> byte-identical artifacts
    _, again = run(tmp_path, small_params, labels, model, tag="b")
    for key in paths:
        assert paths[key].read_bytes() == again[key].read_bytes(), key


def test_ce_fixed_head_is_an_untrained_regular_simplex(tmp_path, small_params, labels):
    small_params["train"]["models"]["ce_fixed"]["head_norm"] = 2.0
    _, paths = run(tmp_path, small_params, labels, "ce_fixed")
    _, state = load_checkpoint(paths["checkpoint"])
    h = small_params["train"]["common"]["representation_dim"]
    np.testing.assert_array_equal(
        state["head"].numpy(), torch.tensor(regular_simplex(10, h, 2.0), dtype=torch.float32)
    )


def test_ce_head_is_trained(tmp_path, small_params, labels):
    _, paths = run(tmp_path, small_params, labels, "ce")
    torch.manual_seed(0)
    from pipeline.maths.models import Model

    initial = Model(config(small_params).model).state_dict()["head"]
    _, state = load_checkpoint(paths["checkpoint"])
    assert not torch.equal(initial, state["head"])


def test_divergence_names_run_iteration_and_value_and_writes_nothing(
    tmp_path, small_params, labels
):
    small_params["train"]["models"]["ce"]["learning_rate"] = 1e30
    expected = (r"run digits/rho1/ce/none/tau0.1-b64-T60/noise0.3-seed0: loss is (nan|inf) at "
                r"iteration \d+")
    with pytest.raises(DivergenceError, match=expected):
        run(tmp_path, small_params, labels, "ce")
    assert list(tmp_path.glob("a.*")) == []


def test_untrusted_checkpoint_is_rejected(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    bad = tmp_path / "evil.pt"
    torch.save({"config": Evil(), "state_dict": {}}, bad, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(ValueError, match="not a loadable checkpoint"):
        load_checkpoint(bad)
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.pt: not a loadable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_class_means_and_nearest_mean_equal_naive_loops():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 4))
    y = rng.integers(0, 5, size=50)
    y[y == 3] = 2  # class 3 empty: never predicted
    means = class_means(torch.tensor(z), torch.tensor(y), 5).numpy()
    for k in range(5):
        if (y == k).any():
            np.testing.assert_allclose(means[k], z[y == k].mean(axis=0), rtol=1e-12)
        else:
            assert np.isnan(means[k]).all()
    pred = nearest_class_mean(torch.tensor(z), torch.tensor(means)).numpy()
    naive = [
        min((np.linalg.norm(zi - means[k]), k) for k in range(5) if (y == k).any())[1] for zi in z
    ]
    np.testing.assert_array_equal(pred, naive)


@pytest.mark.parametrize("model", ["supcon", "ce", "ce_fixed"])
def test_log_carries_the_gap_to_the_sampler_expected_optimum(tmp_path, small_params, labels, model):
    from pipeline.maths.theory import class_frequencies, expected_supcon_optimum

    table, _ = run(tmp_path, small_params, labels, model)
    log = table.to_pandas()
    noisy = pq.read_table(labels)["noisy_label"].to_numpy()
    grid = small_params["grid"]
    optimum = expected_supcon_optimum(
        class_frequencies(noisy, 10), grid["batch_sizes"][0], grid["temperatures"][0], 1.0
    )
    assert (log["supcon_optimum"] == optimum).all()
    np.testing.assert_allclose(log["supcon_gap"], log["supcon_loss"] - optimum, rtol=1e-12)
    if model == "supcon":
        np.testing.assert_allclose(log["loss_gap"], log["supcon_gap"], rtol=1e-12)
    else:  # loss minus a valid per-batch lower bound: never negative
        assert (log["loss_gap"] >= -1e-6).all()
        assert (log["loss_gap"] <= log["loss"] + 1e-9).all()


def test_allocator_refusals_are_told_from_other_errors():
    from pipeline.stages.train import out_of_memory

    assert out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. "
                                      "DefaultCPUAllocator: can't allocate memory: you tried "
                                      "to allocate 640000000000 bytes."))
    assert out_of_memory(torch.OutOfMemoryError("CUDA out of memory."))
    assert not out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_checkpoint_and_log_record_the_labels_and_each_other(tmp_path, small_params, labels):
    """Issue 23: both outputs record the md5 of the labels trained on; the log also that of
    the checkpoint written beside it (geometry pairs a log with its training by it)."""
    from pipeline.infra import io
    from pipeline.stages.train import read_checkpoint

    _, paths = run(tmp_path, small_params, labels, "ce")
    _, _, meta = read_checkpoint(paths["checkpoint"])
    assert meta["inputs"] == {"labels": io.file_md5(labels)}
    log_meta = io.read_metadata(paths["train_log"])
    assert log_meta["inputs"] == meta["inputs"]
    assert log_meta["written_with"] == {"checkpoint": io.file_md5(paths["checkpoint"])}


def test_labels_made_from_another_copy_of_the_dataset_are_refused(tmp_path, small_params,
                                                                  labels):
    """Issue 23: the labels record the md5 of the raw data they were drawn on (the digits
    CSV inside scikit-learn); labels drawn on another copy (the same samples' labels, a
    package upgrade that changed the file) are refused by name before any training."""
    import pyarrow.parquet as pq

    from pipeline.infra import datasets, io

    meta = io.read_metadata(labels)
    raw = datasets.load("digits", small_params["datasets"]["digits"])
    assert meta["inputs"] == {"raw": raw.raw_md5} and raw.raw_md5 == io.file_md5(raw.raw_source)
    meta["inputs"]["raw"] = "0" * 32
    io.write_parquet(pq.read_table(labels).replace_schema_metadata(None), labels, metadata=meta)
    with pytest.raises(io.InputError, match=(
            r"labels.parquet: made from raw with md5 0{32} \(field inputs.raw\), but dataset "
            rf"digits \(.*digits.csv.gz\) has md5 {raw.raw_md5}")):
        run(tmp_path, small_params, labels, "ce")
    assert not (tmp_path / "a.pt").exists()
