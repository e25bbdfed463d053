import numpy as np
import pytest

from medsi.data import synthetic_images
from medsi.errors import ConfigError


@pytest.mark.parametrize("kind", ["iid", "corr"], ids=["iid", "corr"])
def test_shapes_dtypes_and_null_masks(kind):
    images, masks = synthetic_images(kind, 8, 5, np.random.default_rng(0))
    assert images.shape == masks.shape == (5, 8, 8)
    assert images.dtype == np.float64 and masks.dtype == bool
    assert not masks.any()


@pytest.mark.parametrize("kind", ["iid", "corr"], ids=["iid", "corr"])
def test_same_seed_same_images(kind):
    a, ma = synthetic_images(kind, 6, 4, np.random.default_rng(3), signal=2.0)
    b, mb = synthetic_images(kind, 6, 4, np.random.default_rng(3), signal=2.0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)


def test_iid_pixels_are_standard_normal():
    images, _ = synthetic_images("iid", 4, 4000, np.random.default_rng(1))
    flat = images.reshape(len(images), -1)
    np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=0.08)
    np.testing.assert_allclose(flat.var(axis=0), 1.0, atol=0.1)
    corr = np.corrcoef(flat.T)
    assert np.abs(corr - np.eye(16)).max() < 0.08


def test_corr_follows_autoregressive_covariance_over_flattened_pixels():
    images, _ = synthetic_images("corr", 4, 6000, np.random.default_rng(2))
    flat = images.reshape(len(images), -1)
    cov = np.cov(flat.T)
    i = np.arange(16)
    expected = 0.5 ** np.abs(i[:, None] - i[None, :])
    np.testing.assert_allclose(cov, expected, atol=0.07)
    # Row-major flattening: the last pixel of a row is correlated with the first of the next.
    assert abs(np.corrcoef(images[:, 0, 3], images[:, 1, 0])[0, 1] - 0.5) < 0.05


@pytest.mark.parametrize(
    ("size", "side"), [(8, 2), (9, 3), (16, 5)], ids=["size8", "size9", "size16"]
)
def test_signal_square_and_mask(size, side):
    noise, _ = synthetic_images("iid", size, 20, np.random.default_rng(4))
    images, masks = synthetic_images("iid", size, 20, np.random.default_rng(4), signal=3.0)
    # The noise is drawn first, so the same seed gives the same noise plus the signal.
    np.testing.assert_allclose(images - noise, 3.0 * masks, atol=1e-12)
    for mask in masks:
        rows, cols = np.nonzero(mask)
        assert mask.sum() == side * side
        assert rows.max() - rows.min() + 1 == side and cols.max() - cols.min() + 1 == side
    corners = {(int(np.nonzero(m)[0].min()), int(np.nonzero(m)[1].min())) for m in masks}
    assert len(corners) > 1  # positions are random


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"kind": "gauss"}, ConfigError, '"kind" must be one of iid, corr'),
        ({"size": 0}, ConfigError, '"size" must be an integer >= 1'),
        ({"n": 0}, ConfigError, '"n" must be an integer >= 1'),
        ({"signal": -1.0}, ConfigError, '"signal" must be finite and >= 0'),
        ({"signal": float("nan")}, ConfigError, '"signal" must be finite'),
        ({"size": 2, "signal": 1.0}, ConfigError, '"size" must be >= 3 when "signal" > 0'),
        ({"kind": "corr", "size": 65}, ConfigError, '"size" must be at most 64 for "corr"'),
        ({"size": 8.0}, TypeError, '"size" must be an int'),
        ({"signal": "2"}, TypeError, '"signal" must be a real number'),
        ({"rng": 0}, TypeError, '"rng" must be a numpy.random.Generator'),
    ],
    ids=[
        "unknown-kind",
        "size-zero",
        "n-zero",
        "negative-signal",
        "nan-signal",
        "no-room-for-square",
        "corr-too-large",
        "float-size",
        "string-signal",
        "bad-rng",
    ],
)
def test_errors(kwargs, error, match):
    args = {"kind": "iid", "size": 8, "n": 2, "rng": np.random.default_rng(0), **kwargs}
    with pytest.raises(error, match=match):
        synthetic_images(**args)
