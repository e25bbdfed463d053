"""Tests of medsi.si.estimate: covariance estimates from residual images."""

import numpy as np
import pytest

from medsi.errors import ConfigError
from medsi.si.covariance import Diagonal, Isotropic, Stationary, _kernel_spectrum
from medsi.si.estimate import (
    CovarianceKind,
    _autocovariance,
    _density_lower_bound,
    estimate_covariance,
)


def _residuals(covariance, shape, n, seed):
    """Draw n images from N(0, S) and subtract their mean (one position, dof n - 1)."""
    images = covariance.sample(shape, np.random.default_rng(seed), size=n)
    return images - images.mean(axis=0)


def _variance_map(shape):
    return np.random.default_rng(5).uniform(0.5, 2.0, size=shape)


# kind, true covariance, image shape, number of images, largest allowed |S_hat - S| entry.
CASES = [
    ("isotropic", Isotropic(2.5), (8, 8), 400, 0.1),
    ("diagonal", Diagonal(_variance_map((8, 8))), (8, 8), 2000, 0.25),
    ("stationary", Stationary.gaussian(1.5, correlation_length=1.0, radius=2), (16, 16), 400, 0.06),
    ("stationary-isotropic-truth", Isotropic(1.0), (16, 16), 400, 0.04),
]


@pytest.mark.parametrize(
    ("kind", "truth", "shape", "n", "tolerance"), CASES, ids=[c[0] for c in CASES]
)
def test_estimate_is_close_to_the_truth(kind, truth, shape, n, tolerance):
    kind = kind.split("-")[0]
    estimate = estimate_covariance(_residuals(truth, shape, n, seed=1), kind, radius=2)
    assert type(estimate).__name__ == kind.capitalize()
    dense_shape = (8, 8)
    error = np.abs(estimate.to_dense(dense_shape) - truth.to_dense(dense_shape))
    assert error.max() < tolerance
    # and far from a wrong answer: twice the covariance is out of tolerance
    assert np.abs(estimate.to_dense(dense_shape) - 2 * truth.to_dense(dense_shape)).max() > 0.5


def test_isotropic_estimate_is_the_pooled_variance_with_n_minus_1():
    residuals = _residuals(Isotropic(1.0), (4, 4), 10, seed=2)
    estimate = estimate_covariance(residuals, "isotropic")
    assert estimate.variance == pytest.approx(np.sum(residuals**2) / (9 * 16), rel=1e-12)


def test_dof_corrects_for_position_means():
    # 200 positions with 2 images each: residuals about each pair mean keep N - P = 200 dof.
    rng = np.random.default_rng(3)
    images = Isotropic(2.0).sample((8, 8), rng, size=400).reshape(200, 2, 8, 8)
    residuals = (images - images.mean(axis=1, keepdims=True)).reshape(400, 8, 8)
    right = estimate_covariance(residuals, "isotropic", dof=200)
    naive = estimate_covariance(residuals, "isotropic")
    assert right.variance == pytest.approx(2.0, rel=0.05)
    assert naive.variance == pytest.approx(1.0, rel=0.05)


def test_kind_accepts_the_enum():
    residuals = _residuals(Isotropic(1.0), (4, 4), 5, seed=4)
    assert isinstance(estimate_covariance(residuals, CovarianceKind.ISOTROPIC), Isotropic)


def test_diagonal_floors_constant_pixels_at_a_fraction_of_the_median():
    residuals = _residuals(Isotropic(1.0), (4, 4), 50, seed=6)
    residuals[:, 0, 0] = 0.0  # a background pixel without noise
    estimate = estimate_covariance(residuals, "diagonal", floor=0.01)
    vmap = estimate.variance_map
    assert vmap[0, 0] == pytest.approx(0.01 * np.median(vmap.ravel()[1:]), rel=1e-12)
    assert np.all(vmap[vmap != vmap[0, 0]] > 0.3)


def test_stationary_radius_0_is_the_pooled_variance():
    residuals = _residuals(Isotropic(1.0), (6, 6), 20, seed=7)
    stationary = estimate_covariance(residuals, "stationary", radius=0)
    isotropic = estimate_covariance(residuals, "isotropic")
    assert stationary.kernel.shape == (1, 1)
    assert stationary.variance == pytest.approx(isotropic.variance, rel=1e-12)


def test_stationary_raw_kernel_is_the_pair_average():
    residuals = _residuals(Isotropic(1.0), (5, 6), 4, seed=8)
    kernel = _autocovariance(residuals, radius=1, dof=3)
    expected = np.sum(residuals[:, :-1, 1:] * residuals[:, 1:, :-1]) / (3 * 4 * 5)
    assert kernel[2, 0] == pytest.approx(expected, rel=1e-12)  # offset (1, -1)
    assert kernel[0, 2] == pytest.approx(expected, rel=1e-12)  # its mirror (-1, 1)
    np.testing.assert_array_equal(kernel, kernel[::-1, ::-1])


def test_stationary_estimate_is_positive_semidefinite_when_the_raw_one_is_not():
    # Few small images: the raw empirical kernel has a negative spectral density.
    residuals = _residuals(Isotropic(1.0), (4, 4), 3, seed=0)
    raw = _autocovariance(residuals, radius=2, dof=2)
    assert _kernel_spectrum(raw, (64, 64)).min() < -0.05 * raw[2, 2]
    with np.errstate(all="raise", under="ignore"):
        estimate = estimate_covariance(residuals, "stationary", radius=2)
    kernel = estimate.kernel
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1])
    assert _density_lower_bound(kernel) >= 0
    assert _kernel_spectrum(kernel, (256, 256)).min() >= 0
    for shape in [(4, 4), (8, 8), (3, 7)]:
        assert np.linalg.eigvalsh(estimate.to_dense(shape)).min() > -1e-12
    # the correction is moderate: the variance stays the same order
    assert 0.5 * raw[2, 2] < estimate.variance < 3 * raw[2, 2]


def test_stationary_estimate_does_not_warn(recwarn):
    estimate_covariance(_residuals(Isotropic(1.0), (6, 6), 3, seed=9), "stationary", radius=3)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def _good():
    return _residuals(Isotropic(1.0), (4, 4), 5, seed=10)


ERRORS = [
    ("unknown-kind", lambda: estimate_covariance(_good(), "spherical"), ConfigError, '"kind"'),
    (
        "one-image",
        lambda: estimate_covariance(np.ones((1, 4, 4)), "isotropic"),
        ConfigError,
        "at least 2 images",
    ),
    (
        "not-3d",
        lambda: estimate_covariance(np.ones((4, 4)), "isotropic"),
        ConfigError,
        r"\(N, H, W\)",
    ),
    (
        "nan",
        lambda: estimate_covariance(np.where(np.eye(4) > 0, np.nan, _good()), "diagonal"),
        ConfigError,
        "must be finite",
    ),
    (
        "zero",
        lambda: estimate_covariance(np.zeros((3, 4, 4)), "stationary"),
        ConfigError,
        "must vary",
    ),
    (
        "negative-radius",
        lambda: estimate_covariance(_good(), "stationary", radius=-1),
        ConfigError,
        '"radius" must be in',
    ),
    (
        "radius-too-large",
        lambda: estimate_covariance(_good(), "stationary", radius=4),
        ConfigError,
        r'"radius" must be in \[0, 3\]',
    ),
    (
        "radius-float",
        lambda: estimate_covariance(_good(), "stationary", radius=2.0),
        TypeError,
        '"radius" must be an int',
    ),
    (
        "dof-too-large",
        lambda: estimate_covariance(_good(), "isotropic", dof=6),
        ConfigError,
        r'"dof" must be in \[1, 5\]',
    ),
    (
        "dof-zero",
        lambda: estimate_covariance(_good(), "isotropic", dof=0),
        ConfigError,
        '"dof"',
    ),
    (
        "dof-float",
        lambda: estimate_covariance(_good(), "isotropic", dof=2.0),
        TypeError,
        '"dof" must be an int',
    ),
    (
        "floor-text",
        lambda: estimate_covariance(_good(), "diagonal", floor="small"),
        TypeError,
        '"floor" must be a real number',
    ),
    (
        "floor",
        lambda: estimate_covariance(_good(), "diagonal", floor=0.0),
        ConfigError,
        '"floor"',
    ),
    (
        "list",
        lambda: estimate_covariance([[[1.0]], [[2.0]]], "isotropic"),
        TypeError,
        "numpy.ndarray",
    ),
    (
        "bool-array",
        lambda: estimate_covariance(np.ones((2, 2, 2), dtype=bool), "isotropic"),
        TypeError,
        "real",
    ),
]


@pytest.mark.parametrize(("name", "call", "error", "match"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors(name, call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("kind", ["isotropic", "diagonal", "stationary"])
def test_a_mask_keeps_the_loud_background_out_of_the_estimate(kind):
    rng = np.random.default_rng(4)
    residuals = rng.normal(size=(400, 12, 12))
    mask = np.zeros((12, 12), bool)
    mask[3:9, 3:9] = True
    residuals[:, ~mask] *= 10.0  # skull and background vary far more between subjects
    masked = estimate_covariance(residuals, kind, radius=1, mask=mask)
    unmasked = estimate_covariance(residuals, kind, radius=1)
    inside = np.zeros((12, 12))
    inside[5, 5] = 1.0
    assert masked.quadratic(inside) == pytest.approx(1.0, rel=0.15)
    if kind != "diagonal":  # a per-pixel map sees the difference anyway
        assert unmasked.quadratic(inside) > 10


def test_a_mask_per_image_and_its_errors():
    residuals = np.random.default_rng(5).normal(size=(50, 6, 6))
    masks = np.ones((50, 6, 6), bool)
    full = estimate_covariance(residuals, "isotropic")
    assert estimate_covariance(residuals, "isotropic", mask=masks).variance == pytest.approx(
        full.variance
    )
    with pytest.raises(ConfigError, match='"mask" must be a bool array'):
        estimate_covariance(residuals, "isotropic", mask=np.ones((5, 5), bool))
    with pytest.raises(ConfigError, match='"mask" is empty'):
        estimate_covariance(residuals, "isotropic", mask=np.zeros((6, 6), bool))
