import dataclasses

import numpy as np
import pytest
import scipy.special
import scipy.stats

from medsi.data.noise import (
    NOISE_FAMILIES,
    NORMAL,
    NoiseDistribution,
    max_noise_distance,
    noise_distribution,
    noise_images,
)
from medsi.errors import ConfigError

DISTANCES = (0.03, 0.06, 0.09, 0.12, 0.15)
CASES = [(family, d) for family in NOISE_FAMILIES for d in DISTANCES]
CASE_IDS = [f"{family}-{d}" for family, d in CASES]

# Standard normal quantiles z on a uniform grid: the independent W1 below uses the quantile
# form W1 = integral over u in (0, 1) of |G(u) - Phi^-1(u)| du with u = Phi(z), i.e. the
# integral over z of |G(Phi(z)) - z| phi(z) dz, by the trapezoidal rule. The solver instead
# integrates |F(x) - Phi(x)| over x by Gauss-Legendre pieces.
Z = np.linspace(-11.0, 11.0, 11001)
PHI_Z = scipy.stats.norm.pdf(Z)


def _bisect(f, target, decreasing):
    lo = np.full_like(target, -50.0)
    hi = np.full_like(target, 500.0)
    for _ in range(70):
        mid = 0.5 * (lo + hi)
        value = f(mid)
        go_right = value > target if decreasing else value < target
        lo = np.where(go_right, mid, lo)
        hi = np.where(go_right, hi, mid)
    return 0.5 * (lo + hi)


def _transport(law):
    """G(Phi(z)) for the law's quantile function G: the monotone map from N(0, 1) onto it."""
    rv = law.rv
    lower = Z <= 0.0
    p = scipy.special.ndtr(Z[lower])  # cdf targets left of the median
    q = scipy.special.ndtr(-Z[~lower])  # survival targets right of it, exact in the tail
    if law.family == "exponnorm":
        # scipy inverts the exponnorm cdf one point at a time; bisect all points at once.
        return np.concatenate([_bisect(rv.cdf, p, False), _bisect(rv.sf, q, True)])
    return np.concatenate([rv.ppf(p), rv.isf(q)])


@pytest.mark.parametrize(("family", "distance"), CASES, ids=CASE_IDS)
def test_law_is_standardised_and_at_the_distance(family, distance):
    law = noise_distribution(family, distance)
    assert isinstance(law, NoiseDistribution)
    assert law.family == family and law.distance == distance
    mean, variance = law.rv.stats(moments="mv")
    assert abs(float(mean)) < 1e-8
    assert abs(float(variance) - 1.0) < 1e-8

    transported = _transport(law)
    # The same moments by integration over the quantile function, not scipy's formulas.
    assert abs(np.trapezoid(transported * PHI_Z, Z)) < 1e-8
    assert abs(np.trapezoid(transported**2 * PHI_Z, Z) - 1.0) < 1e-8
    w1 = np.trapezoid(np.abs(transported - Z) * PHI_Z, Z)
    assert w1 == pytest.approx(distance, abs=1e-6)


@pytest.mark.parametrize("family", ["exponnorm", "t"], ids=["exponnorm", "t"])
def test_independent_w1_sees_a_wrong_distance(family):
    # The check above can fail: a law solved for a distance 1e-4 away is caught.
    law = noise_distribution(family, 0.0901)
    w1 = np.trapezoid(np.abs(_transport(law) - Z) * PHI_Z, Z)
    assert abs(w1 - 0.09) > 5e-5


@pytest.mark.parametrize(
    ("family", "parameter", "low", "high", "direction"),
    [
        ("skewnorm", "a", 0.0, 50.0, 1),
        ("exponnorm", "K", 0.0, 30.0, 1),
        ("gennorm_steep", "beta", 0.5, 2.0, -1),
        ("gennorm_flat", "beta", 2.0, 40.0, 1),
        ("t", "df", 2.1, np.inf, -1),
    ],
    ids=NOISE_FAMILIES,
)
def test_parameter_moves_away_from_the_normal_limit(family, parameter, low, high, direction):
    laws = [noise_distribution(family, d) for d in DISTANCES]
    values = np.array([law.parameter for law in laws])
    assert all(law.parameter_name == parameter for law in laws)
    assert np.all((low < values) & (values < high))
    # a, K and the flat beta grow with the distance; the steep beta and df shrink.
    assert np.all(np.sign(np.diff(values)) == direction)


@pytest.mark.parametrize(
    ("family", "skew_sign", "kurtosis_sign"),
    [
        ("skewnorm", 1, 1),
        ("exponnorm", 1, 1),
        ("gennorm_steep", 0, 1),
        ("gennorm_flat", 0, -1),
        ("t", 0, 1),
    ],
    ids=NOISE_FAMILIES,
)
@pytest.mark.parametrize("distance", [0.03, 0.15], ids=["d0.03", "d0.15"])
def test_shape_of_the_deviation(family, skew_sign, kurtosis_sign, distance):
    # scipy's "k" is the excess kurtosis: kurtosis - 3.
    skew, excess = noise_distribution(family, distance).rv.stats(moments="sk")
    if skew_sign:
        assert np.sign(skew) == skew_sign and abs(skew) > 1e-3
    else:
        assert abs(skew) < 1e-12
    assert np.sign(excess) == kurtosis_sign and abs(excess) > 1e-3


@pytest.mark.parametrize("family", NOISE_FAMILIES, ids=NOISE_FAMILIES)
def test_samples_follow_the_law(family):
    # d = 0.09 keeps the t law's fourth moment finite (df 5.5), so the sample variance settles.
    law = noise_distribution(family, 0.09)
    rng = np.random.default_rng(20240601)
    values = law.sample(200_000, rng)
    assert values.shape == (200_000,) and values.dtype == np.float64
    assert abs(values.mean()) < 0.01
    assert abs(values.var() - 1.0) < 0.02
    assert scipy.stats.kstest(values, law.cdf).pvalue > 1e-3
    reference = rng.standard_normal(400_000)
    assert scipy.stats.wasserstein_distance(values, reference) == pytest.approx(0.09, abs=0.008)
    # Sample skewness shows the direction too.
    skew = scipy.stats.skew(values)
    assert skew > 0.05 if family in ("skewnorm", "exponnorm") else abs(skew) < 0.05


def test_pdf_integrates_to_the_cdf():
    law = noise_distribution("skewnorm", 0.12)
    x = np.linspace(-3.0, 3.0, 6001)
    increments = np.trapezoid(law.pdf(x), x)
    assert increments == pytest.approx(law.cdf(3.0) - law.cdf(-3.0), abs=1e-6)


@pytest.mark.parametrize("family", NOISE_FAMILIES, ids=NOISE_FAMILIES)
def test_results_are_cached(family):
    assert noise_distribution(family, 0.06) is noise_distribution(family, 0.06)


@pytest.mark.parametrize("family", NOISE_FAMILIES, ids=NOISE_FAMILIES)
def test_max_distance_covers_the_paper_and_is_the_limit(family):
    reach = max_noise_distance(family)
    assert 0.15 < reach < 0.6
    law = noise_distribution(family, 0.999 * reach)
    assert law.distance == 0.999 * reach
    match = rf'must be below max_noise_distance\("{family}"\) = {reach:.4f}'
    with pytest.raises(ConfigError, match=match):
        noise_distribution(family, reach)


def test_normal_family_is_standard_normal():
    law = noise_distribution(NORMAL, 0)
    assert dataclasses.astuple(law) == ("normal", 0.0, None, None, 0.0, 1.0)
    images = noise_images("normal", 0.0, 4, 3, np.random.default_rng(5))
    np.testing.assert_array_equal(images, np.random.default_rng(5).standard_normal((3, 4, 4)))


@pytest.mark.parametrize("family", NOISE_FAMILIES, ids=NOISE_FAMILIES)
def test_images_shape_dtype_and_replay(family):
    a = noise_images(family, 0.06, 8, 5, np.random.default_rng(3))
    b = noise_images(family, 0.06, 8, 5, np.random.default_rng(3))
    c = noise_images(family, 0.06, 8, 5, np.random.default_rng(4))
    assert a.shape == (5, 8, 8) and a.dtype == np.float64 and a.flags.c_contiguous
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # The images are the law's samples, drawn in one call.
    expected = noise_distribution(family, 0.06).sample((5, 8, 8), np.random.default_rng(3))
    np.testing.assert_array_equal(a, expected)


def test_pixels_are_uncorrelated():
    images = noise_images("exponnorm", 0.15, 3, 20_000, np.random.default_rng(7))
    flat = images.reshape(len(images), -1)
    assert np.abs(np.corrcoef(flat.T) - np.eye(9)).max() < 0.04


# The reach is named, and the families that do reach the distance are suggested.
UNREACHABLE_SKEWNORM = (
    r'below max_noise_distance\("skewnorm"\) = 0\.1925, .* got 0\.25; pass a smaller distance '
    r"or a family that reaches it \(exponnorm, gennorm_steep, t\)\."
)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"family": "laplace"}, ConfigError, '"family" must be one of skewnorm, exponnorm'),
        ({"family": 3}, TypeError, '"family" must be a str, got int'),
        ({"distance": 0.0}, ConfigError, '"distance" must be finite and > 0, got 0.0'),
        ({"distance": -0.1}, ConfigError, '"distance" must be finite and > 0'),
        ({"distance": float("nan")}, ConfigError, '"distance" must be finite and > 0'),
        ({"distance": float("inf")}, ConfigError, '"distance" must be finite and > 0'),
        ({"distance": 0.25}, ConfigError, UNREACHABLE_SKEWNORM),
        ({"distance": "0.1"}, TypeError, '"distance" must be a real number, got str'),
        ({"distance": True}, TypeError, '"distance" must be a real number, got bool'),
        ({"family": "normal", "distance": 0.1}, ConfigError, 'must be 0 for family "normal"'),
        ({"size": 0}, ConfigError, '"size" must be an integer >= 1'),
        ({"n": 0}, ConfigError, '"n" must be an integer >= 1'),
        ({"size": 8.0}, TypeError, '"size" must be an int, got float'),
        ({"rng": 0}, TypeError, '"rng" must be a numpy.random.Generator'),
    ],
    ids=[
        "unknown-family",
        "family-not-str",
        "zero-distance",
        "negative-distance",
        "nan-distance",
        "inf-distance",
        "unreachable-distance",
        "string-distance",
        "bool-distance",
        "normal-with-distance",
        "size-zero",
        "n-zero",
        "float-size",
        "bad-rng",
    ],
)
def test_noise_images_errors(kwargs, error, match):
    args = {
        "family": "skewnorm",
        "distance": 0.06,
        "size": 8,
        "n": 2,
        "rng": np.random.default_rng(0),
        **kwargs,
    }
    with pytest.raises(error, match=match):
        noise_images(**args)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: noise_distribution("gauss", 0.1), ConfigError, '"family" must be one of'),
        (lambda: noise_distribution(None, 0.1), TypeError, '"family" must be a str'),
        (lambda: noise_distribution("t", 0), ConfigError, '"distance" must be finite and > 0'),
        (lambda: noise_distribution("t", [0.1]), TypeError, '"distance" must be a real number'),
        (lambda: noise_distribution("gennorm_flat", 0.16), ConfigError, r"= 0\.1528, the largest"),
        (lambda: noise_distribution("t", 0.6), ConfigError, "got 0.6; pass a smaller distance.$"),
        (lambda: max_noise_distance("normal"), ConfigError, "must be one of skewnorm, exponnorm"),
        (lambda: max_noise_distance(["t"]), TypeError, '"family" must be a str, got list'),
        (
            lambda: noise_distribution("t", 0.1).sample(3, np.random),
            TypeError,
            '"rng" must be a numpy.random.Generator, got module',
        ),
    ],
    ids=[
        "unknown-family",
        "family-not-str",
        "zero-distance",
        "list-distance",
        "flat-gennorm-out-of-reach",
        "beyond-every-family",
        "max-of-normal",
        "max-family-not-str",
        "sample-bad-rng",
    ],
)
def test_other_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
