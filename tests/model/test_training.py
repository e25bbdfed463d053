import numpy as np
import pytest
import torch

from medsi.errors import ConfigError, InputDataError
from medsi.model import PLUNet
from medsi.model.bundle import ModelBundle, load_bundle
from medsi.model.training import CHECKPOINT_NAME, split_heldout, train_bundle, train_unet

TINY = {
    "model": {"channels": [4, 8], "time_embed_dim": 8},
    "training": {"batch_size": 16, "learning_rate": 1e-3, "checkpoint_every": 2},
}


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).standard_normal((40, 8, 8))


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_same_seed_gives_identical_weights_and_leaves_global_rng(images):
    before = torch.get_rng_state()
    a, record_a = train_unet(TINY, images, epochs=2, seed=5, progress=False)
    b, record_b = train_unet(TINY, images, epochs=2, seed=5, progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    _assert_same_weights(a, b)
    assert record_a["losses"] == record_b["losses"]
    c, _ = train_unet(TINY, images, epochs=2, seed=6, progress=False)
    assert not torch.equal(a.out.conv.weight, c.out.conv.weight)


def test_result_and_record(images):
    unet, record = train_unet(TINY, images, epochs=2, seed=1, progress=False)
    assert isinstance(unet, PLUNet) and not unet.training
    assert unet.config["channels"] == [4, 8]
    assert next(unet.parameters()).dtype == torch.float32
    assert record["epochs"] == 2 and len(record["losses"]) == 2
    assert record["final_loss"] == record["losses"][-1]
    assert record["seed"] == 1 and record["n_images"] == 40
    assert record["image_size"] == [8, 8] and record["resumed_from"] is None
    assert record["seconds"] > 0


def test_config_supplies_epochs_and_seed(images):
    cfg = {**TINY, "training": {**TINY["training"], "epochs": 1, "seed": 3}}
    a, record = train_unet(cfg, images, progress=False)
    b, _ = train_unet(TINY, images, epochs=1, seed=3, progress=False)
    assert record["epochs"] == 1 and record["seed"] == 3
    _assert_same_weights(a, b)


def test_loss_decreases():
    data = np.random.default_rng(1).standard_normal((64, 8, 8))
    cfg = {**TINY, "model": {"channels": [8, 16], "time_embed_dim": 16}}
    _, record = train_unet(cfg, data, epochs=8, seed=0, progress=False)
    losses = record["losses"]
    assert np.mean(losses[-2:]) < 0.9 * losses[0]


def test_resume_equals_uninterrupted(images, tmp_path):
    full, full_record = train_unet(TINY, images, epochs=4, seed=2, progress=False)

    train_unet(TINY, images, epochs=2, seed=2, checkpoint_dir=tmp_path, progress=False)
    assert (tmp_path / CHECKPOINT_NAME).is_file()
    assert not list(tmp_path.glob("*.tmp"))
    resumed, record = train_unet(
        TINY, images, epochs=4, seed=2, checkpoint_dir=tmp_path, resume=True, progress=False
    )
    _assert_same_weights(full, resumed)
    assert record["losses"] == full_record["losses"]
    assert record["resumed_from"] == 2


def test_checkpoint_every_and_final_epoch(images, tmp_path):
    train_unet(TINY, images, epochs=3, seed=0, checkpoint_dir=tmp_path, progress=False)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["epoch"] == 3 and len(state["losses"]) == 3
    assert {"unet", "optimizer", "shuffle_generator", "noise_generator"} <= state.keys()


def test_resume_from_finished_run_returns_it(images, tmp_path):
    first, _ = train_unet(TINY, images, epochs=2, seed=0, checkpoint_dir=tmp_path, progress=False)
    again, record = train_unet(
        TINY, images, epochs=2, seed=0, checkpoint_dir=tmp_path, resume=True, progress=False
    )
    _assert_same_weights(first, again)
    assert record["resumed_from"] == 2 and len(record["losses"]) == 2


def test_resume_without_checkpoint_warns_and_starts_afresh(images, tmp_path):
    with pytest.warns(UserWarning, match="no checkpoint"):
        _, record = train_unet(
            TINY, images, epochs=1, checkpoint_dir=tmp_path, resume=True, progress=False
        )
    assert record["resumed_from"] is None


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"seed": 9}, "was made with another config, seed or training images"),
        ({"epochs": 1}, r'"epochs" must be at least the checkpoint\'s epoch 2'),
    ],
    ids=["other-seed", "fewer-epochs"],
)
def test_resume_refuses_another_run(images, tmp_path, change, match):
    train_unet(TINY, images, epochs=2, seed=0, checkpoint_dir=tmp_path, progress=False)
    kwargs = {"epochs": 2, "seed": 0, **change}
    with pytest.raises(ConfigError, match=match):
        train_unet(TINY, images, checkpoint_dir=tmp_path, resume=True, progress=False, **kwargs)


def test_resume_refuses_other_images(images, tmp_path):
    train_unet(TINY, images, epochs=2, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="another config, seed or training images"):
        train_unet(TINY, images[1:], epochs=3, checkpoint_dir=tmp_path, resume=True, progress=False)


def test_damaged_checkpoint(images, tmp_path):
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"garbage")
    with pytest.raises(InputDataError, match="could not be read as a medsi training checkpoint"):
        train_unet(TINY, images, epochs=1, checkpoint_dir=tmp_path, resume=True, progress=False)


def _nan_images():
    x = np.zeros((4, 8, 8))
    x[2, 3, 3] = np.nan
    return x


@pytest.mark.parametrize(
    ("data", "kwargs", "error", "match"),
    [
        (np.zeros((0, 8, 8)), {}, InputDataError, '"images" must hold at least one image'),
        (np.zeros((8, 8)), {}, InputDataError, r'"images" must have shape \(N, H, W\)'),
        (np.zeros((2, 1, 8, 8)), {}, InputDataError, r'"images" must have shape \(N, H, W\)'),
        (_nan_images(), {}, InputDataError, '"images" must be finite, got 1 NaN'),
        (np.zeros((4, 8, 8), dtype=complex), {}, InputDataError, "must hold real numbers"),
        (np.zeros((4, 10, 10)), {}, ConfigError, "divisible by the U-Net's size multiple 4"),
        ([[[0.0]]], {}, TypeError, '"images" must be a numpy.ndarray'),
        (np.zeros((4, 8, 8)), {"resume": True}, ConfigError, '"resume" needs "checkpoint_dir"'),
        (np.zeros((4, 8, 8)), {"device": "nodevice"}, ConfigError, '"device" must name'),
        (np.zeros((4, 8, 8)), {"epochs": 0}, ConfigError, '"training.epochs" must be >= 1'),
    ],
    ids=[
        "empty",
        "2-d",
        "4-d",
        "nan",
        "complex",
        "not-divisible",
        "not-array",
        "resume-without-dir",
        "bad-device",
        "zero-epochs",
    ],
)
def test_errors(data, kwargs, error, match):
    cfg = {**TINY, "model": {"channels": [4, 8, 8], "time_embed_dim": 8}}
    with pytest.raises(error, match=match):
        train_unet(cfg, data, progress=False, **kwargs)


def test_diverging_loss_is_an_error(images):
    cfg = {**TINY, "training": {**TINY["training"], "learning_rate": 1e30}}
    with pytest.raises(ConfigError, match="training diverged"):
        train_unet(cfg, images * 1e30, epochs=3, progress=False)


def test_split_heldout_is_seeded_and_disjoint():
    train, heldout = split_heldout(20, 0.25, seed=0)
    assert len(heldout) == 5 and len(train) == 15
    assert sorted(np.concatenate([train, heldout]).tolist()) == list(range(20))
    again = split_heldout(20, 0.25, seed=0)
    np.testing.assert_array_equal(train, again[0])
    assert not np.array_equal(heldout, split_heldout(20, 0.25, seed=1)[1])
    assert len(split_heldout(5, 0.01, seed=0)[1]) == 2  # the covariance needs two


def test_split_heldout_too_few_images():
    with pytest.raises(InputDataError, match="must hold at least 3 images"):
        split_heldout(2, 0.2, seed=0)


def test_train_bundle_holds_out_images_and_saves(images, tmp_path):
    positions = np.arange(40) % 2
    out = tmp_path / "bundle"
    bundle = train_bundle(
        TINY,
        images,
        positions,
        out=out,
        epochs=1,
        seed=4,
        progress=False,
        input_space="synthetic iid 8x8",
        data_description="test images",
    )
    assert isinstance(bundle, ModelBundle)
    train_idx, heldout_idx = split_heldout(40, 0.2, seed=4)
    assert bundle.training["n_train"] == len(train_idx) == 32
    assert bundle.training["n_heldout"] == len(heldout_idx) == 8
    assert bundle.training["data"] == "test images"
    assert bundle.config["training"]["epochs"] == 1 and bundle.config["training"]["seed"] == 4
    assert bundle.config["data"]["image_size"] == [8, 8]
    # The reference bank is the mean of the held-out images per position, never training ones.
    held, held_pos = images[heldout_idx], positions[heldout_idx]
    for p in (0, 1):
        np.testing.assert_allclose(bundle.reference_means[p], held[held_pos == p].mean(axis=0))
    unet, _ = train_unet(TINY, images[train_idx], epochs=1, seed=4, progress=False)
    _assert_same_weights(bundle.unet, unet)
    loaded = load_bundle(out)
    assert loaded.content_hash == bundle.content_hash
    assert loaded.input_space == "synthetic iid 8x8"
    with pytest.raises(ConfigError, match='"out" must not exist'):
        train_bundle(TINY, images, out=out, epochs=1, progress=False)


def test_train_bundle_positions_must_fit(images):
    with pytest.raises(ConfigError, match=r'"positions" must have shape \(40,\)'):
        train_bundle(TINY, images, np.zeros(3, dtype=int), epochs=1, progress=False)
