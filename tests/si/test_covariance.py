"""Tests of medsi.si.covariance: S v, v^T S v, scaling, sampling and validation."""

import numpy as np
import pytest

from medsi.errors import ConfigError
from medsi.si.covariance import (
    MAX_DENSE_SIZE,
    Covariance,
    Dense,
    Diagonal,
    Isotropic,
    Stationary,
)

# A non-separable kernel with a diagonal term, positive semidefinite (its Fourier transform is
# 1 + 0.4 cos(a) + 0.3 cos(b) + 0.2 cos(a + b) >= 0.1).
CROSS_KERNEL = np.array(
    [
        [0.1, 0.15, 0.0],
        [0.2, 1.0, 0.2],
        [0.0, 0.15, 0.1],
    ]
)
# A non-square kernel (h = 1, w = 2): outer product of two positive semidefinite profiles.
WIDE_KERNEL = 1.5 * np.outer([0.5, 1.0, 0.5], [0.25, 0.5, 1.0, 0.5, 0.25])
# Not positive semidefinite: 1 + 1.6 cos(b) < 0 near b = pi.
NON_PSD_KERNEL = np.array([[0.8, 1.0, 0.8]])


def _variance_map(shape):
    return np.random.default_rng(11).uniform(0.5, 2.0, size=shape)


def _random_spd(shape):
    n = shape[0] * shape[1]
    a = np.random.default_rng(12).standard_normal((n, n + 3))
    return a @ a.T / n + 0.1 * np.eye(n)


# Each factory builds a covariance for images of the given shape.
FACTORIES = [
    lambda shape: Isotropic(2.5),
    lambda shape: Diagonal(_variance_map(shape)),
    lambda shape: Stationary(CROSS_KERNEL),
    lambda shape: Stationary(WIDE_KERNEL),
    lambda shape: Stationary.gaussian(1.3, correlation_length=1.0, radius=3),
    lambda shape: Dense(_random_spd(shape)),
    lambda shape: Dense.autoregressive(shape, rho=0.5, variance=0.7),
]
FACTORY_IDS = [
    "isotropic",
    "diagonal",
    "stationary-cross",
    "stationary-wide",
    "stationary-gaussian",
    "dense-random",
    "dense-autoregressive",
]
SHAPES = [(1, 1), (4, 4), (5, 7), (7, 5), (2, 3)]
SHAPE_IDS = ["1x1", "4x4", "5x7", "7x5", "2x3-smaller-than-kernel"]


def _random_image(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ------------------------------------------------------------------------ apply and quadratic


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("factory", FACTORIES, ids=FACTORY_IDS)
def test_apply_and_quadratic_match_dense(factory, shape):
    cov = factory(shape)
    dense = cov.to_dense(shape)
    n = shape[0] * shape[1]
    assert dense.shape == (n, n)
    np.testing.assert_array_equal(dense, dense.T)
    for seed in range(3):
        v = _random_image(shape, seed)
        expected = (dense @ v.ravel()).reshape(shape)
        result = cov.apply(v)
        assert result.shape == shape
        assert result.dtype == np.float64
        np.testing.assert_allclose(result, expected, rtol=0, atol=1e-12)
        quadratic = cov.quadratic(v)
        assert isinstance(quadratic, float)
        assert quadratic == pytest.approx(v.ravel() @ dense @ v.ravel(), rel=1e-12, abs=1e-12)


def test_apply_accepts_integer_and_float32_images():
    cov = Stationary(CROSS_KERNEL)
    v = np.arange(12).reshape(3, 4)
    expected = cov.apply(v.astype(np.float64))
    np.testing.assert_array_equal(cov.apply(v), expected)
    np.testing.assert_allclose(cov.apply(v.astype(np.float32)), expected, rtol=1e-12)


def test_apply_does_not_modify_input():
    v = _random_image((4, 5))
    before = v.copy()
    for cov in (Isotropic(2.0), Diagonal(_variance_map((4, 5))), Stationary(CROSS_KERNEL)):
        cov.apply(v)
    np.testing.assert_array_equal(v, before)


def test_stationary_dense_follows_kernel_offsets():
    # Cov(pixel (y, x), pixel (y + dy, x + dx)) = kernel[h + dy, w + dx].
    shape = (3, 4)
    dense = Stationary(CROSS_KERNEL).to_dense(shape)

    def index(y, x):
        return y * shape[1] + x

    assert dense[index(0, 0), index(0, 0)] == 1.0
    assert dense[index(0, 0), index(1, 1)] == 0.1  # (dy, dx) = (1, 1)
    assert dense[index(0, 1), index(1, 0)] == 0.0  # (dy, dx) = (1, -1)
    assert dense[index(1, 1), index(0, 1)] == 0.15  # (dy, dx) = (-1, 0)
    assert dense[index(1, 1), index(1, 2)] == 0.2  # (dy, dx) = (0, 1)
    assert dense[index(0, 0), index(0, 2)] == 0.0  # outside the kernel
    # Row ends do not wrap: the last pixel of row 0 and the first of row 1 are far apart.
    assert dense[index(0, 3), index(1, 0)] == 0.0


def test_stationary_apply_of_a_point_is_the_kernel():
    v = np.zeros((7, 9))
    v[3, 4] = 1.0
    result = Stationary(WIDE_KERNEL).apply(v)
    np.testing.assert_allclose(result[2:5, 2:7], WIDE_KERNEL, atol=1e-15)
    assert np.abs(result).sum() == pytest.approx(np.abs(WIDE_KERNEL).sum())


# ------------------------------------------------------------------------------------- scaled


@pytest.mark.parametrize("factory", FACTORIES, ids=FACTORY_IDS)
def test_scaled(factory):
    shape = (5, 7)
    cov = factory(shape)
    dense_before = cov.to_dense(shape)
    scaled = cov.scaled(0.25)
    assert type(scaled) is type(cov)
    np.testing.assert_allclose(scaled.to_dense(shape), 0.25 * dense_before, rtol=1e-14)
    v = _random_image(shape)
    np.testing.assert_allclose(scaled.apply(v), 0.25 * cov.apply(v), rtol=1e-13, atol=1e-14)
    assert scaled.quadratic(v) == pytest.approx(0.25 * cov.quadratic(v), rel=1e-13)
    # The original is unchanged.
    np.testing.assert_array_equal(cov.to_dense(shape), dense_before)


def test_scaled_reference_of_averaged_images():
    # The mean of `count` independent images has covariance S / count.
    cov = Isotropic(2.0).scaled(1 / 4)
    assert cov.variance == 0.5


def test_scaled_dense_samples_from_scaled_factor():
    cov = Dense.autoregressive((2, 3), rho=0.5)
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_allclose(
        cov.scaled(4.0).sample((2, 3), rng_a, size=3),
        2.0 * cov.sample((2, 3), rng_b, size=3),
        rtol=1e-14,
    )


@pytest.mark.parametrize(
    ("factor", "error", "match"),
    [
        (0.0, ConfigError, "finite and > 0"),
        (-1.0, ConfigError, "finite and > 0"),
        (np.inf, ConfigError, "finite and > 0"),
        (np.nan, ConfigError, "finite and > 0"),
        ("2", TypeError, "real number"),
        (True, TypeError, "real number"),
    ],
    ids=["zero", "negative", "inf", "nan", "string", "bool"],
)
def test_scaled_rejects_bad_factor(factor, error, match):
    with pytest.raises(error, match=match):
        Isotropic(1.0).scaled(factor)


# ------------------------------------------------------------------------------------- sample


def _assert_empirical_covariance(samples, dense):
    """Compare the sample covariance of flattened draws with `dense`, entry by entry."""
    count = samples.shape[0]
    flat = samples.reshape(count, -1)
    empirical = flat.T @ flat / count  # mean zero is known
    variances = np.diag(dense)
    standard_error = np.sqrt((np.outer(variances, variances) + dense**2) / count)
    z = np.abs(empirical - dense) / standard_error
    assert z.max() < 5.5, f"largest standardised deviation {z.max():.2f}"
    # Sanity: the mean is zero too.
    mean_z = np.abs(flat.mean(axis=0)) / np.sqrt(variances / count)
    assert mean_z.max() < 5.5


@pytest.mark.parametrize("shape", [(4, 5), (3, 2)], ids=["4x5", "3x2-smaller-than-kernel"])
@pytest.mark.parametrize("factory", FACTORIES, ids=FACTORY_IDS)
def test_sample_has_the_covariance(factory, shape):
    cov = factory(shape)
    samples = cov.sample(shape, np.random.default_rng(2024), size=20_000)
    assert samples.shape == (20_000, *shape)
    assert samples.dtype == np.float64
    _assert_empirical_covariance(samples, cov.to_dense(shape))


def test_sample_shape_and_reproducibility():
    cov = Stationary.gaussian(1.0, correlation_length=1.5, radius=5)
    one = cov.sample((6, 8), np.random.default_rng(3))
    assert one.shape == (6, 8)
    np.testing.assert_array_equal(one, cov.sample((6, 8), np.random.default_rng(3)))
    assert cov.sample((6, 8), np.random.default_rng(3), size=1).shape == (1, 6, 8)


def test_stationary_sample_on_a_large_image():
    # Circulant embedding at a realistic size: pool the covariance over pixel pairs.
    cov = Stationary.gaussian(2.0, correlation_length=2.0, radius=6)
    samples = cov.sample((64, 48), np.random.default_rng(7), size=50)
    assert samples.shape == (50, 64, 48)
    for dy, dx in [(0, 0), (0, 1), (1, 0), (2, 3), (-3, 1), (6, 6)]:
        a = samples[:, max(0, -dy) : 64 - max(0, dy), max(0, -dx) : 48 - max(0, dx)]
        b = samples[:, max(0, dy) : 64 + min(0, dy), max(0, dx) : 48 + min(0, dx)]
        assert np.mean(a * b) == pytest.approx(cov.kernel[6 + dy, 6 + dx], abs=0.06)


def test_dense_sample_of_a_singular_matrix():
    # Rank one: every pixel is the same N(0, 2) value.
    cov = Dense(np.full((4, 4), 2.0))
    samples = cov.sample((2, 2), np.random.default_rng(1), size=20_000)
    np.testing.assert_allclose(samples - samples[:, :1, :1], 0.0, atol=1e-12)
    assert samples[:, 0, 0].var() == pytest.approx(2.0, rel=0.05)


def test_stationary_sample_falls_back_to_dense_for_non_psd_kernel():
    # Spectrum 1 + 1.8 cos(2 b) < 0 near b = pi / 2: the circulant embedding of a 1 x 3 image
    # (period 5) has a negative eigenvalue, but S on a 1 x 3 image, [[1, 0, .9], [0, 1, 0],
    # [.9, 0, 1]], is positive definite, so sampling goes through the dense factor.
    with pytest.warns(UserWarning, match="not positive semidefinite"):
        cov = Stationary(np.array([[0.9, 0.0, 1.0, 0.0, 0.9]]))
    samples = cov.sample((1, 3), np.random.default_rng(4), size=20_000)
    _assert_empirical_covariance(samples, cov.to_dense((1, 3)))
    # On a 1 x 5 image pixels 0, 2, 4 form a chain with correlation 0.9: S is indefinite.
    with pytest.raises(ConfigError, match="must be positive semidefinite"):
        cov.sample((1, 5), np.random.default_rng(4))


def test_stationary_sample_refuses_large_non_psd():
    with pytest.warns(UserWarning, match="not positive semidefinite"):
        cov = Stationary(NON_PSD_KERNEL)
    with pytest.raises(ConfigError, match="to sample images of more than"):
        cov.sample((65, 64), np.random.default_rng(4))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rng": 0}, TypeError, "numpy.random.Generator"),
        ({"rng": np.random.RandomState(0)}, TypeError, "numpy.random.Generator"),
        ({"size": 0}, ConfigError, '"size" must be >= 1'),
        ({"size": 2.0}, TypeError, '"size" must be an int'),
        ({"shape": (3, 4, 5)}, ConfigError, "must have two entries"),
        ({"shape": (0, 4)}, ConfigError, "must be >= 1"),
        ({"shape": (3.0, 4)}, TypeError, "entries must be ints"),
        ({"shape": 12}, TypeError, '"shape" must be a tuple'),
    ],
    ids=["int-rng", "legacy-rng", "size-zero", "size-float", "3d-shape", "empty", "float", "int"],
)
def test_sample_rejects_bad_arguments(kwargs, error, match):
    arguments = {"shape": (3, 4), "rng": np.random.default_rng(0), "size": None} | kwargs
    with pytest.raises(error, match=match):
        Isotropic(1.0).sample(**arguments)


# -------------------------------------------------------------------------------- shape checks


@pytest.mark.parametrize(
    ("cov", "shape", "match"),
    [
        (Diagonal(np.ones((4, 5))), (5, 4), r"serves images of shape \(4, 5\)"),
        (Dense(np.eye(20)), (5, 5), "serves images of 20 pixels"),
        (Isotropic(1.0), (0, 3), "must be >= 1"),
        (Stationary(CROSS_KERNEL), (2,), "must have two entries"),
    ],
    ids=["diagonal-transposed", "dense-wrong-size", "isotropic-empty", "stationary-1d"],
)
def test_check_shape_rejects(cov, shape, match):
    with pytest.raises(ConfigError, match=match):
        cov.check_shape(shape)
    if len(shape) == 2:
        with pytest.raises(ConfigError, match=match):
            cov.apply(np.ones(shape))


def test_check_shape_accepts_any_layout_of_the_right_size():
    cov = Dense(np.eye(20))
    for shape in [(4, 5), (5, 4), (1, 20), [2, 10]]:
        cov.check_shape(shape)
    Stationary(CROSS_KERNEL).check_shape((1, 1))


@pytest.mark.parametrize(
    ("v", "error", "match"),
    [
        (np.ones(12), ConfigError, '"v" must be a 2-D image'),
        (np.ones((2, 3, 4)), ConfigError, '"v" must be a 2-D image'),
        ([[1.0, 2.0]], TypeError, '"v" must be a numpy.ndarray'),
        (np.ones((3, 4), dtype=complex), TypeError, "real"),
        (np.ones((3, 4), dtype=bool), TypeError, "real"),
    ],
    ids=["1d", "3d", "list", "complex", "bool"],
)
def test_apply_and_quadratic_reject_bad_vectors(v, error, match):
    cov = Isotropic(1.0)
    with pytest.raises(error, match=match):
        cov.apply(v)
    with pytest.raises(error, match=match):
        cov.quadratic(v)


def test_to_dense_refuses_large_images():
    with pytest.raises(ConfigError, match=f"at most {MAX_DENSE_SIZE} pixels"):
        Isotropic(1.0).to_dense((65, 64))
    assert Isotropic(1.0).to_dense((64, 64)).shape == (4096, 4096)


# ---------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: Isotropic(0.0), ConfigError, '"variance" must be finite and > 0'),
        (lambda: Isotropic(np.nan), ConfigError, '"variance" must be finite and > 0'),
        (lambda: Isotropic("1"), TypeError, '"variance" must be a real number'),
        (lambda: Diagonal(np.ones(5)), ConfigError, '"variance_map" must be a non-empty 2-D'),
        (lambda: Diagonal(np.ones((0, 3))), ConfigError, "non-empty 2-D"),
        (
            lambda: Diagonal(np.array([[1.0, 0.0], [1.0, 1.0]])),
            ConfigError,
            r"finite and > 0 everywhere, got 0\.0 at pixel \(0, 1\)",
        ),
        (
            lambda: Diagonal(np.array([[1.0, np.inf]])),
            ConfigError,
            "finite and > 0 everywhere",
        ),
        (lambda: Diagonal([[1.0]]), TypeError, '"variance_map" must be a numpy.ndarray'),
        (lambda: Stationary(np.ones((2, 3))), ConfigError, "odd sizes"),
        (lambda: Stationary(np.ones(3)), ConfigError, "odd sizes"),
        (
            lambda: Stationary(np.array([[0.5, 1.0, 0.2]])),
            ConfigError,
            "symmetric under point reflection",
        ),
        (
            lambda: Stationary(np.array([[0.0, -1.0, 0.0]])),
            ConfigError,
            r"centre \(the pixel variance\) must be > 0",
        ),
        (lambda: Stationary(np.array([[np.nan]])), ConfigError, '"kernel" must be finite'),
        (lambda: Stationary(np.ones((3, 3), dtype=complex)), TypeError, "real"),
        (
            lambda: Stationary.gaussian(1.0, correlation_length=0.0, radius=2),
            ConfigError,
            '"correlation_length" must be finite and > 0',
        ),
        (
            lambda: Stationary.gaussian(-1.0, correlation_length=1.0, radius=2),
            ConfigError,
            '"variance" must be finite and > 0',
        ),
        (
            lambda: Stationary.gaussian(1.0, correlation_length=1.0, radius=-1),
            ConfigError,
            '"radius" must be >= 0',
        ),
        (
            lambda: Stationary.gaussian(1.0, correlation_length=1.0, radius=2.5),
            TypeError,
            '"radius" must be an int',
        ),
        (lambda: Dense(np.ones((2, 3))), ConfigError, "square 2-D"),
        (
            lambda: Dense(np.eye(MAX_DENSE_SIZE + 1, dtype=np.float32)),
            ConfigError,
            f"at most {MAX_DENSE_SIZE} x {MAX_DENSE_SIZE}",
        ),
        (lambda: Dense(np.array([[1.0, 0.5], [0.4, 1.0]])), ConfigError, "must be symmetric"),
        (lambda: Dense(np.array([[1.0, np.nan], [np.nan, 1.0]])), ConfigError, "finite"),
        (
            lambda: Dense(np.array([[1.0, 0.0], [0.0, 0.0]])),
            ConfigError,
            "positive diagonal",
        ),
        (
            lambda: Dense(np.array([[1.0, 2.0], [2.0, 1.0]])),
            ConfigError,
            "must be positive semidefinite",
        ),
        (
            lambda: Dense.autoregressive((3, 3), rho=1.0),
            ConfigError,
            r'"rho" must be in \(-1, 1\)',
        ),
        (lambda: Dense.autoregressive((3, 3), rho="0.5"), TypeError, '"rho" must be a real'),
        (
            lambda: Dense.autoregressive((3, 3), variance=0.0),
            ConfigError,
            '"variance" must be finite and > 0',
        ),
        (
            lambda: Dense.autoregressive((65, 64)),
            ConfigError,
            f"at most {MAX_DENSE_SIZE} pixels",
        ),
    ],
    ids=[
        "isotropic-zero",
        "isotropic-nan",
        "isotropic-string",
        "diagonal-1d",
        "diagonal-empty",
        "diagonal-zero",
        "diagonal-inf",
        "diagonal-list",
        "stationary-even",
        "stationary-1d",
        "stationary-asymmetric",
        "stationary-centre",
        "stationary-nan",
        "stationary-complex",
        "gaussian-length",
        "gaussian-variance",
        "gaussian-radius-negative",
        "gaussian-radius-float",
        "dense-not-square",
        "dense-too-large",
        "dense-asymmetric",
        "dense-nan",
        "dense-zero-variance",
        "dense-indefinite",
        "autoregressive-rho",
        "autoregressive-rho-string",
        "autoregressive-variance",
        "autoregressive-too-large",
    ],
)
def test_constructors_reject(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_stationary_warns_for_non_psd_kernel():
    with pytest.warns(UserWarning, match="not positive semidefinite") as record:
        Stationary(NON_PSD_KERNEL)
    assert record[0].filename == __file__  # stacklevel points at the caller


@pytest.mark.parametrize(
    "kernel",
    [CROSS_KERNEL, WIDE_KERNEL, np.array([[3.0]])],
    ids=["cross", "wide", "point"],
)
def test_stationary_does_not_warn_for_psd_kernel(kernel, recwarn):
    Stationary(kernel)
    assert len(recwarn) == 0


def test_stationary_symmetrises_round_off():
    kernel = CROSS_KERNEL.copy()
    kernel[0, 0] += 1e-14
    cov = Stationary(kernel)
    np.testing.assert_array_equal(cov.kernel, cov.kernel[::-1, ::-1])


# ---------------------------------------------------------------------------------- constructors


@pytest.mark.parametrize(
    ("correlation_length", "radius", "tolerance"),
    [
        (0.5, 0, 1e-15),
        (0.5, 2, 1e-15),
        (1.0, 3, 1e-15),
        (1.5, 5, 0.02),
        (2.0, 6, 0.02),
        (2.5, 8, 0.02),
        (3.0, 9, 0.02),
        (5.0, 15, 0.02),
    ],
    ids=["radius-0", "short", "unit", "fitted-1.5", "fitted-2", "fitted-2.5", "fitted-3", "long"],
)
def test_gaussian_kernel_is_psd_and_gaussian(correlation_length, radius, tolerance, recwarn):
    variance = 1.7
    cov = Stationary.gaussian(variance, correlation_length=correlation_length, radius=radius)
    assert len(recwarn) == 0
    kernel = cov.kernel
    assert kernel.shape == (2 * radius + 1, 2 * radius + 1)
    assert cov.variance == pytest.approx(variance, rel=1e-15)
    np.testing.assert_array_equal(kernel, kernel[::-1, ::-1])
    spectrum = np.fft.fft2(np.fft.ifftshift(np.pad(kernel, 8 * radius + 8))).real
    assert spectrum.min() > -1e-12
    offsets = np.arange(-radius, radius + 1)
    d2 = offsets[:, None] ** 2 + offsets[None, :] ** 2
    target = variance * np.exp(-d2 / (2 * correlation_length**2))
    np.testing.assert_allclose(kernel, target, rtol=0, atol=tolerance * variance)


def test_gaussian_warns_when_radius_is_too_small():
    with pytest.warns(UserWarning, match='"radius" 2 is too small') as record:
        cov = Stationary.gaussian(1.0, correlation_length=2.0, radius=2)
    assert record[0].filename == __file__
    spectrum = np.fft.fft2(np.fft.ifftshift(np.pad(cov.kernel, 20))).real
    assert spectrum.min() > -1e-12


def test_gaussian_radius_zero_is_isotropic():
    cov = Stationary.gaussian(2.0, correlation_length=1.0, radius=0)
    np.testing.assert_array_equal(cov.to_dense((2, 3)), Isotropic(2.0).to_dense((2, 3)))


@pytest.mark.parametrize(
    ("shape", "rho", "variance"),
    [((4, 4), 0.5, 1.0), ((5, 7), 0.3, 2.0), ((1, 6), -0.4, 0.5), ((3, 2), 0.0, 1.0)],
    ids=["paper-4x4", "5x7", "negative-rho", "rho-zero"],
)
def test_autoregressive_matches_rho_power(shape, rho, variance):
    cov = Dense.autoregressive(shape, rho=rho, variance=variance)
    n = shape[0] * shape[1]
    expected = np.array([[variance * rho ** abs(i - j) for j in range(n)] for i in range(n)])
    np.testing.assert_allclose(cov.matrix, expected, rtol=1e-15, atol=0)
    assert cov.size == n
    # Row-major: the last pixel of row 0 and the first of row 1 are neighbours.
    if shape[0] > 1:
        dense = cov.to_dense(shape)
        assert dense[shape[1] - 1, shape[1]] == pytest.approx(variance * rho)


def test_autoregressive_defaults_are_the_paper_setting():
    np.testing.assert_allclose(
        Dense.autoregressive((1, 3)).matrix,
        [[1.0, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 1.0]],
    )


# --------------------------------------------------------------------------------- immutability


@pytest.mark.parametrize("factory", FACTORIES, ids=FACTORY_IDS)
def test_covariances_are_immutable(factory):
    cov = factory((3, 4))
    assert isinstance(cov, Covariance)
    with pytest.raises(AttributeError, match="immutable"):
        cov.anything = 1
    for name in ("variance_map", "kernel", "matrix"):
        array = getattr(cov, name, None)
        if array is not None:
            with pytest.raises(ValueError, match="read-only"):
                array[0, 0] = 1.0
    assert type(cov).__name__ in repr(cov)


def test_constructors_copy_their_arrays():
    variance_map = np.ones((2, 2))
    cov = Diagonal(variance_map)
    variance_map[0, 0] = 5.0
    assert cov.variance_map[0, 0] == 1.0


def test_covariance_is_abstract():
    with pytest.raises(TypeError):
        Covariance()
