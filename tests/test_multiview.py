"""Multi-view supcon (model supcon_mv): the loss against naive loops, the shift augmentation of
the views, the views a training step sees, and a tiny run through train, embed and geometry.
The closed form of its optimum is tested in tests/test_theory.py."""

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import naive_supcon, with_value
from hypothesis import given, settings
from hypothesis import strategies as st
from runs import run, run_of

from pipeline.infra.config import ParamsError, validate_params
from pipeline.maths.batches import (
    MAX_SHIFT,
    PAD,
    DeviceImages,
    channel_statistics,
    random_crop_flip,
    random_shift,
    shift_images,
)
from pipeline.maths.losses import multiview_supcon_loss, supcon_loss
from pipeline.maths.theory import class_frequencies, expected_supcon_optimum
from pipeline.stages.embed import extract_embeddings
from pipeline.stages.geometry import measure_geometry
from pipeline.stages.train import TrainConfig, Trainer, load_checkpoint


def on_sphere(rng, *shape):
    z = rng.normal(size=shape)
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


def naive_multiview_supcon(views: np.ndarray, y: np.ndarray, tau: float) -> float:
    """Khosla et al.'s multi-view supcon from its definition, in float64: anchors are the
    views (u, j) (view u of image j); the positives of (u, j) are the other views of its class,
    (u', j) for u' != u among them; the denominator runs over every other view."""
    v, b, _ = views.shape
    every = [(u, j) for u in range(v) for j in range(b)]
    total = 0.0
    for u, j in every:
        others = [(s, k) for s, k in every if (s, k) != (u, j)]
        positives = [(s, k) for s, k in others if y[k] == y[j]]
        if not positives:
            continue
        denominator = sum(math.exp(views[u, j] @ views[s, k] / tau) for s, k in others)
        total -= sum(math.log(math.exp(views[u, j] @ views[s, k] / tau) / denominator)
                     for s, k in positives) / len(positives)
    return total / (v * b)


# ----------------------------------------------------------------------------- the loss


@settings(max_examples=40, deadline=None)
@given(
    v=st.integers(2, 3),
    b=st.integers(1, 10),
    k=st.integers(1, 5),
    h=st.integers(1, 6),
    tau=st.floats(0.05, 5.0),
    seed=st.integers(0, 2**31),
)
def test_multiview_supcon_equals_naive_loop(v, b, k, h, tau, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=b)
    views = on_sphere(rng, v, b, h)
    got = multiview_supcon_loss(torch.tensor(views), torch.tensor(y), tau).item()
    assert got == pytest.approx(naive_multiview_supcon(views, y, tau), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [0, 0, 1, 2, 2, 2], [5]])
def test_identical_views_give_the_single_view_loss_of_each_image_drawn_twice(labels):
    """With both views equal, z_{1j} = z_{2j} = z_j, the multi-view batch is the single-view
    batch in which every image j occurs twice: each view (u, j) has the same positives (the
    other copy of j, and both copies of every other image of its class) and the same
    denominator (every other copy) as position (u, j) of that batch, and the loss, a sum over
    anchors divided by their number 2b, does not depend on their order. So the two agree, and
    an image alone in its class in the batch still contributes (its copy is its positive)."""
    rng = np.random.default_rng(0)
    y = np.array(labels)
    z = on_sphere(rng, len(y), 4)
    multi = multiview_supcon_loss(torch.tensor(np.stack([z, z])), torch.tensor(y), 0.3).item()
    twice = np.repeat(np.arange(len(y)), 2)  # 0, 0, 1, 1, ...: each image drawn twice
    single = supcon_loss(torch.tensor(z[twice]), torch.tensor(y[twice]), 0.3).item()
    assert multi == pytest.approx(single, rel=1e-12)
    assert multi == pytest.approx(naive_supcon(z[twice], y[twice], 0.3), rel=1e-12)
    if len(y) == 1:  # one image: its two views are each other's only other view, log 1 = 0
        assert multi == 0.0
        return
    assert multi > 0  # every anchor has a positive, singletons of the batch included
    # ... unlike the single-view loss of the b images, where singletons add 0
    assert multi != pytest.approx(supcon_loss(torch.tensor(z), torch.tensor(y), 0.3).item())


def test_multiview_supcon_gradient_equals_autograd_of_the_naive_loss():
    rng = np.random.default_rng(1)
    y = torch.tensor([0, 1, 1, 2, 0])
    views = torch.tensor(on_sphere(rng, 2, 5, 3), requires_grad=True)
    multiview_supcon_loss(views, y, 0.5).backward()

    reference = views.detach().clone().requires_grad_()
    z = reference.reshape(10, 3)
    labels = y.repeat(2)
    logits = (z @ z.T / 0.5).masked_fill(torch.eye(10, dtype=torch.bool), float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~torch.eye(10, dtype=torch.bool)
    loss = -(log_prob.masked_fill(~positives, 0).sum(1) / positives.sum(1)).sum() / 10
    loss.backward()
    torch.testing.assert_close(views.grad, reference.grad, rtol=1e-10, atol=1e-12)


def test_multiview_supcon_names_mismatched_labels():
    with pytest.raises(ValueError, match=r"labels have shape \(4,\), the views \(2, 3, 5\)"):
        multiview_supcon_loss(torch.zeros(2, 3, 5), torch.zeros(4, dtype=torch.long), 0.1)


# ----------------------------------------------------------------------------- the views


def naive_shift(image: np.ndarray, down: int, right: int) -> np.ndarray:
    """One image (C, H, W) moved ``down`` rows and ``right`` columns, zeros moved in."""
    c, h, w = image.shape
    out = np.zeros_like(image)
    for r in range(h):
        for col in range(w):
            if 0 <= r - down < h and 0 <= col - right < w:
                out[:, r, col] = image[:, r - down, col - right]
    return out


def test_shift_of_a_known_image_by_known_offsets():
    image = np.arange(1, 65, dtype=np.uint8).reshape(1, 1, 8, 8)  # pixel (r, c) = 8 r + c + 1
    x = torch.as_tensor(np.repeat(image, 3, axis=0))
    out = shift_images(x, torch.tensor([[1, 0, -1], [-1, 0, 1]])).numpy()
    # image 0 one row down, one column left: row 0 and column 7 are padding
    assert (out[0, 0, 0] == 0).all() and (out[0, 0, :, 7] == 0).all()
    assert out[0, 0, 1, 0] == image[0, 0, 0, 1] == 2
    np.testing.assert_array_equal(out[0, 0, 1:, :7], image[0, 0, :7, 1:])
    np.testing.assert_array_equal(out[1], image[0])  # offset (0, 0): unchanged
    for i, (down, right) in enumerate([(1, -1), (0, 0), (-1, 1)]):
        np.testing.assert_array_equal(out[i], naive_shift(image[0], down, right))


def test_random_shift_equals_per_sample_loop_and_covers_every_offset():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 17, size=(200, 1, 8, 8), dtype=np.uint8)
    out = random_shift(torch.as_tensor(images), torch.Generator().manual_seed(3)).numpy()
    # replay the generator's one draw
    offsets = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (2, 200),
                            generator=torch.Generator().manual_seed(3)).numpy()
    for i in range(200):
        np.testing.assert_array_equal(out[i], naive_shift(images[i], *offsets[:, i]))
    assert len(set(map(tuple, offsets.T))) == (2 * MAX_SHIFT + 1) ** 2  # all 9 offsets occur
    assert out.dtype == np.uint8 and out.shape == images.shape


def device_images(n=20, seed=0):
    images = np.random.default_rng(seed).integers(0, 17, size=(n, 1, 8, 8), dtype=np.uint8)
    mean, std = channel_statistics(images, 16)
    return images, DeviceImages(images, 16, mean, std, "cpu")


def test_views_are_view_major_and_independently_augmented():
    images, data = device_images()
    idx = torch.tensor([3, 7, 3, 0])
    plain = data.views(idx, (), 2)
    assert plain.shape == (8, 1, 8, 8)
    torch.testing.assert_close(plain[:4], data.batch(idx), rtol=0, atol=0)
    torch.testing.assert_close(plain[4:], data.batch(idx), rtol=0, atol=0)

    shifted = data.views(idx, ("shift",), 2, torch.Generator().manual_seed(1))
    offsets = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (2, 8),
                            generator=torch.Generator().manual_seed(1))
    raw = torch.as_tensor(images)[idx.repeat(2)]  # row v * 4 + j: view v of image j
    torch.testing.assert_close(shifted, data.normalise(shift_images(raw, offsets)), rtol=0, atol=0)
    assert not torch.equal(shifted[:4], shifted[4:])  # two views, two draws

    # several augmentations: each in turn, its draws for all views at once
    both = data.views(idx, ("standard", "shift"), 2, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    expected = random_shift(random_crop_flip(raw, g), g)
    torch.testing.assert_close(both, data.normalise(expected), rtol=0, atol=0)
    assert PAD > MAX_SHIFT
    with pytest.raises(ValueError, match=r"unknown view augmentation 'blur'"):
        data.views(idx, ("blur",), 2)


def test_view_augmentations_compose_the_run_axis_and_the_model_switch(multiview_params):
    def cfg(augmentation, view):
        p = with_value(multiview_params, "train.models.supcon_mv.view_augmentation", view)
        return TrainConfig.from_params(p, run_of(p, "supcon_mv", augmentation, 0.0))

    assert cfg("none", "shift").view_augmentations == ("shift",)
    assert cfg("standard", "shift").view_augmentations == ("standard", "shift")
    assert cfg("standard", "standard").view_augmentations == ("standard",)  # cropped once
    assert cfg("none", "shift").views == 2


def test_single_view_configs_keep_their_dict_and_multiview_ones_carry_the_switch(
    multiview_params,
):
    supcon = TrainConfig.from_params(
        multiview_params, run_of(multiview_params, "supcon", noise_fraction=0.0))
    assert supcon.views == 1 and supcon.view_augmentation is None
    assert "view_augmentation" not in supcon.to_dict()  # checkpoints and logs: bytes unchanged
    assert TrainConfig.from_dict(supcon.to_dict()) == supcon
    multi = TrainConfig.from_params(
        multiview_params, run_of(multiview_params, "supcon_mv", noise_fraction=0.0))
    assert multi.to_dict()["view_augmentation"] == "shift"
    assert TrainConfig.from_dict(multi.to_dict()) == multi


def test_a_training_step_takes_supcon_over_both_views_of_the_sampled_images(multiview_params):
    from pipeline.infra import datasets

    cfg = TrainConfig.from_params(
        multiview_params, run_of(multiview_params, "supcon_mv", noise_fraction=0.0))
    data = datasets.load("digits", multiview_params["datasets"]["digits"])
    labels = data.train.labels
    trainer = Trainer(cfg, data, labels, torch.device("cpu"))
    loss, tracked, bound = trainer.step(0)
    assert bound is None and tracked == loss

    # replay: the same initial weights and the same draws (indices, then one shift per view)
    replay = Trainer(cfg, data, labels, torch.device("cpu"))
    g = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randint(len(labels), (cfg.batch_size,), generator=g)
    offsets = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (2, 2 * cfg.batch_size), generator=g)
    raw = replay.train_images.images[idx.repeat(2)]
    z = replay.net.represent(replay.train_images.normalise(shift_images(raw, offsets)))
    assert z.shape == (2 * cfg.batch_size, cfg.model.representation_dim)  # 2b views of b images
    expected = multiview_supcon_loss(z.reshape(2, cfg.batch_size, -1),
                                     torch.as_tensor(labels)[idx], cfg.temperature)
    torch.testing.assert_close(loss, expected.detach(), rtol=0, atol=0)


# ----------------------------------------------------------------------------- the stages


def test_supcon_mv_trains_embeds_and_measures_deterministically(tmp_path, multiview_params,
                                                                 labels):
    table, paths = run(tmp_path, multiview_params, labels, "supcon_mv")
    log = table.to_pandas()
    common = multiview_params["train"]["common"]
    (grid_iterations,) = multiview_params["grid"]["iterations"]
    assert log["iteration"].tolist() == list(
        range(common["eval_every"], grid_iterations + 1, common["eval_every"])
    )
    assert (log["loss"] == log["supcon_loss"]).all() and log["test_accuracy_head"].isna().all()
    noisy = pq.read_table(labels)["noisy_label"].to_numpy()
    b, tau = multiview_params["grid"]["batch_sizes"][0], multiview_params["grid"]["temperatures"][0]
    optimum = expected_supcon_optimum(class_frequencies(noisy, 10), b, tau, 1.0, views=2)
    assert (log["supcon_optimum"] == optimum).all()
    assert optimum != expected_supcon_optimum(class_frequencies(noisy, 10), b, tau, 1.0)
    np.testing.assert_allclose(log["loss_gap"], log["loss"] - optimum, rtol=1e-12)
    cfg, state = load_checkpoint(paths["checkpoint"])
    assert cfg.model.model == "supcon_mv" and cfg.view_augmentation == "shift"
    assert not any(k.startswith("head") for k in state)  # no head, like supcon
    _, again = run(tmp_path, multiview_params, labels, "supcon_mv", tag="b")
    for key in paths:
        assert paths[key].read_bytes() == again[key].read_bytes(), key

    out = {"embeddings": tmp_path / "emb.parquet", "head": tmp_path / "head.parquet"}
    job = dict(run=run_of(multiview_params, "supcon_mv"))
    extract_embeddings(multiview_params, **job, labels=labels,
                       checkpoint=paths["checkpoint"], **out)
    emb = np.stack(pq.read_table(out["embeddings"]).to_pandas()["embedding"].to_numpy())
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)  # on the sphere
    assert pq.read_table(out["head"]).num_rows == 0
    geometry = {"metrics": tmp_path / "metrics.json", "cosines": tmp_path / "cosines.parquet"}
    measure_geometry(multiview_params, **job, embeddings=out["embeddings"], head=out["head"],
                     train_log=paths["train_log"], **geometry)
    metrics = json.loads(geometry["metrics"].read_text())
    assert metrics["model"] == "supcon_mv"
    assert metrics["final_supcon_gap"] == pytest.approx(log["supcon_gap"].iloc[-1])
    assert "head_weights" not in set(pq.read_table(geometry["cosines"])["kind"].to_pylist())


def test_embed_refuses_a_checkpoint_made_with_other_views(tmp_path, multiview_params, labels):
    _, paths = run(tmp_path, multiview_params, labels, "supcon_mv")
    changed = with_value(multiview_params, "train.models.supcon_mv.view_augmentation", "standard")
    with pytest.raises(ValueError, match=r"view_augmentation: 'shift' in the checkpoint vs "
                                         r"'standard' now"):
        extract_embeddings(changed, run=run_of(multiview_params, "supcon_mv"), labels=labels,
                           checkpoint=paths["checkpoint"], embeddings=tmp_path / "e",
                           head=tmp_path / "h")


# ----------------------------------------------------------------------------- params


def with_multiview_grid(params, section):
    p = with_value(params, "grid.models", ["supcon", "supcon_mv"])
    p["grid"].pop("run_sets", None)
    if section is not None:
        p["train"]["models"]["supcon_mv"] = section
    return p


@pytest.mark.parametrize(
    "section,message",
    [
        ({"learning_rate": 0.1, "view_augmentation": "crop"},
         r"train\.models\.supcon_mv\.view_augmentation: 'crop' is not one of "
         r"\['shift', 'standard'\]"),
        ({"learning_rate": 0.1},
         r"train\.models\.supcon_mv: 'view_augmentation' is a required property"),
        ({"learning_rate": 0.1, "view_augmentation": "shift", "views": 3},
         r"unknown key 'train\.models\.supcon_mv\.views'"),
        (None, r"grid\.models lists 'supcon_mv' but train\.models\.supcon_mv is missing"),
    ],
)
def test_bad_multiview_params_are_named(params, section, message):
    with pytest.raises(ParamsError, match=message):
        validate_params(with_multiview_grid(params, section))


def test_multiview_params_are_valid(params):
    section = {"learning_rate": 0.1, "view_augmentation": "shift"}
    assert validate_params(with_multiview_grid(params, section))


def test_cluster_requests_know_the_multiview_models_and_their_cost(params):
    from pipeline.infra import job_resources
    from pipeline.maths.models import MULTIVIEW_MODELS

    assert job_resources.VIEWS == MULTIVIEW_MODELS  # one table, written twice (see there)
    common = params["train"]["common"]
    assert job_resources.training_minutes(common, 300_000, ["digits"], 2) > (
        job_resources.training_minutes(common, 300_000, ["digits"])
    )
    section = {"learning_rate": 0.1, "view_augmentation": "shift"}
    with_mv = with_multiview_grid(params, section)
    assert job_resources.job_resources("train", with_mv)["runtime"] >= (
        job_resources.job_resources("train", params)["runtime"]
    )
