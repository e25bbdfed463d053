"""Non-Gaussian noise for the paper's robustness experiments (its Appendix F).

The robustness study replaces the N(0, 1) pixels of the ``iid`` images by draws from a
non-Gaussian law that is *standardised* (mean 0, variance 1) and lies at a chosen
1-Wasserstein distance d from N(0, 1); the paper uses d = 0.03, 0.06, 0.09, 0.12 and 0.15.
Each family has one shape parameter, and d = 0 is its normal limit:

============== ============================== ========= ==================== ================
family         law (scipy.stats)              parameter normal limit         shape range
============== ============================== ========= ==================== ================
skewnorm       skew normal (SND)              a         a = 0                (0, 50]
exponnorm      exponentially modified normal  K         K -> 0               (0, 30]
gennorm_steep  generalised normal, beta < 2   beta      beta = 2             [0.5, 2)
gennorm_flat   generalised normal, beta > 2   beta      beta = 2             (2, 40]
t              Student's t                    df        df -> infinity       [2.1, infinity)
============== ============================== ========= ==================== ================

``skewnorm`` and ``exponnorm`` are skewed to the right, ``gennorm_steep`` (peaked, heavier
tails, the paper's GND) and ``t`` have kurtosis above 3 and ``gennorm_flat`` (flat-topped,
lighter tails) below 3. The t law needs df > 2 to have a variance; its range stops at 2.1.

The standardised law of a family with shape p is X = (Y - m) / s with Y ~ family(p) and m,
s^2 the exact mean and variance scipy.stats gives for it; in scipy's terms it is
``family(p, loc=-m / s, scale=1 / s)``. Its distance to N(0, 1) is

    W1 = integral over x of |F(x) - Phi(x)| dx,

computed by composite Gauss-Legendre quadrature between the points where F - Phi changes
sign (so the integrand is smooth on every piece), with the two tails |x| > 12 mapped by
x = 12 e^v. Along each family's shape range W1 grows monotonically from 0, so
:func:`noise_distribution` finds the shape for a target d with Brent's method.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats

from medsi.data.synthetic import _count
from medsi.errors import ConfigError

if TYPE_CHECKING:
    from scipy.stats._distn_infrastructure import rv_continuous_frozen

__all__ = [
    "NOISE_FAMILIES",
    "NORMAL",
    "NoiseDistribution",
    "noise_distribution",
    "max_noise_distance",
    "noise_images",
]

NOISE_FAMILIES = ("skewnorm", "exponnorm", "gennorm_steep", "gennorm_flat", "t")
"""The non-Gaussian families of :func:`noise_distribution`.

``"skewnorm"``: skew normal (SND); ``"exponnorm"``: exponentially modified Gaussian (EMG);
``"gennorm_steep"``: generalised normal (GND) with shape beta < 2 (peaked, heavy tails);
``"gennorm_flat"``: generalised normal with beta > 2 (flat-topped, light tails); ``"t"``:
Student's t. All are standardised to mean 0 and variance 1.
"""

NORMAL = "normal"
"""The family name of N(0, 1) itself, accepted with distance 0 as the no-deviation baseline."""


@dataclasses.dataclass(frozen=True)
class _Family:
    """A family's scipy law and how its shape parameter follows the search variable theta.

    theta = 0 is the normal limit (W1 = 0) and W1 increases with theta up to ``theta_max``.
    """

    law: scipy.stats.rv_continuous
    parameter_name: str
    theta_max: float
    parameter: Callable[[float], float]


_FAMILIES = {
    "skewnorm": _Family(scipy.stats.skewnorm, "a", 50.0, lambda theta: theta),
    "exponnorm": _Family(scipy.stats.exponnorm, "K", 30.0, lambda theta: theta),
    # beta = 2 - theta, down to 0.5
    "gennorm_steep": _Family(scipy.stats.gennorm, "beta", 1.5, lambda theta: 2.0 - theta),
    # beta = 2 + theta, up to 40
    "gennorm_flat": _Family(scipy.stats.gennorm, "beta", 38.0, lambda theta: 2.0 + theta),
    # df = 1 / theta, down to 2.1
    "t": _Family(scipy.stats.t, "df", 1.0 / 2.1, lambda theta: 1.0 / theta),
}

# Quadrature layout of _w1_to_normal: the core [-_CORE, _CORE] in panels of at most
# _CORE_PANEL with _NODES Gauss-Legendre nodes each, and the tails x = +-_CORE e^v for v in
# [0, _TAIL_V] (x up to about 4e20) in panels of _TAIL_PANEL. Sign changes of F - Phi are
# located on a grid of _ROOT_GRID points over the core, then refined with brentq; the
# pieces next to 0 end at +-_GRADED.
_CORE = 12.0
_CORE_PANEL = 0.5
_TAIL_V = 45.0
_TAIL_PANEL = 2.5
_ROOT_GRID = 601
_GRADED = 10.0 ** -np.arange(1.0, 7.0)
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(20)


@dataclasses.dataclass(frozen=True)
class NoiseDistribution:
    """A standardised noise law (mean 0, variance 1) at a 1-Wasserstein distance from N(0, 1).

    Built by :func:`noise_distribution`. The law is scipy.stats' ``family`` with shape
    ``parameter``, shifted and scaled as ``family(parameter, loc=loc, scale=scale)``.

    Attributes
    ----------
    family
        One of :data:`NOISE_FAMILIES`, or :data:`NORMAL`.
    distance
        The 1-Wasserstein distance to N(0, 1) that was asked for (0 for ``"normal"``).
    parameter_name
        scipy's name of the shape parameter: ``"a"`` (skewnorm), ``"K"`` (exponnorm),
        ``"beta"`` (gennorm_steep, gennorm_flat), ``"df"`` (t); None for ``"normal"``.
    parameter
        The shape parameter that puts the standardised law at ``distance``; None for
        ``"normal"``.
    loc
        Location of the standardised law, -m / s for the family's mean m and standard
        deviation s at ``parameter``.
    scale
        Scale of the standardised law, 1 / s.
    """

    family: str
    distance: float
    parameter_name: str | None
    parameter: float | None
    loc: float
    scale: float

    @property
    def rv(self) -> rv_continuous_frozen:
        """The standardised law as a frozen scipy.stats distribution."""
        if self.parameter is None:
            return scipy.stats.norm(loc=self.loc, scale=self.scale)
        return _FAMILIES[self.family].law(self.parameter, loc=self.loc, scale=self.scale)

    def sample(self, shape: int | tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """Draw independent values of the standardised law.

        Parameters
        ----------
        shape
            Shape of the returned array.
        rng
            The generator every draw comes from (no global random state is used).

        Returns
        -------
        numpy.ndarray
            ``shape``, float64.

        Raises
        ------
        TypeError
            If ``rng`` is not a ``numpy.random.Generator``.
        """
        _check_rng(rng)
        return np.asarray(self.rv.rvs(size=shape, random_state=rng), dtype=np.float64)

    def cdf(self, x: np.ndarray | float) -> np.ndarray:
        """Cumulative distribution function of the standardised law at ``x``."""
        return self.rv.cdf(x)

    def pdf(self, x: np.ndarray | float) -> np.ndarray:
        """Probability density of the standardised law at ``x``."""
        return self.rv.pdf(x)


# ------------------------------------------------------------------------------ validation


def _check_family(family, allow_normal: bool) -> str:
    names = NOISE_FAMILIES + ((NORMAL,) if allow_normal else ())
    if not isinstance(family, str):
        raise TypeError(
            f'"family" must be a str, got {type(family).__name__}; pass one of {", ".join(names)}.'
        )
    if family not in names:
        raise ConfigError(
            f'"family" must be one of {", ".join(names)}, got {family!r}; pick a family from '
            "medsi.data.noise.NOISE_FAMILIES."
        )
    return family


def _check_distance(distance, family: str) -> float:
    if isinstance(distance, bool) or not isinstance(distance, numbers.Real):
        raise TypeError(
            f'"distance" must be a real number, got {type(distance).__name__}; pass e.g. 0.03.'
        )
    distance = float(distance)
    if family == NORMAL:
        if distance != 0.0:
            raise ConfigError(
                f'"distance" must be 0 for family "normal", got {distance!r}; pass 0, or a '
                f"non-Gaussian family ({', '.join(NOISE_FAMILIES)}) for a positive distance."
            )
        return distance
    if not (math.isfinite(distance) and distance > 0.0):
        raise ConfigError(
            f'"distance" must be finite and > 0, got {distance!r}; pass a 1-Wasserstein '
            'distance such as 0.03, or family "normal" with distance 0 for N(0, 1).'
        )
    return distance


def _check_rng(rng) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f'"rng" must be a numpy.random.Generator, got {type(rng).__name__}; '
            "pass numpy.random.default_rng(seed)."
        )


# ------------------------------------------------------------------------------ W1 solver


def _standardisation(law: scipy.stats.rv_continuous, parameter: float) -> tuple[float, float]:
    """Return (loc, scale) that give ``law(parameter)`` mean 0 and variance 1."""
    mean, variance = law.stats(parameter, moments="mv")
    std = math.sqrt(float(variance))
    return -float(mean) / std + 0.0, 1.0 / std  # + 0.0 turns -0.0 into 0.0


def _difference(family: str, parameter: float, loc: float, scale: float):
    """Return x -> F(x) - Phi(x) for the standardised law, accurate in absolute terms.

    Left of 0 it subtracts the two cdfs and right of 0 the two survival functions, so the
    small tail values are never differences of numbers close to 1.
    """
    rv = _FAMILIES[family].law(parameter, loc=loc, scale=scale)
    if family == "skewnorm":
        # scipy's skewnorm cdf falls back to slow numerical integration where it is below
        # 1e-6 (the left tail for a > 0); F(y) = Phi(y) - 2 T(y, a) with Owen's T is exact.
        def lower_cdf(x):
            y = (x - loc) / scale
            return scipy.special.ndtr(y) - 2.0 * scipy.special.owens_t(y, parameter)

    else:
        lower_cdf = rv.cdf

    def difference(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        out = np.empty_like(x)
        left = x <= 0.0
        with np.errstate(over="ignore", under="ignore"):
            out[left] = lower_cdf(x[left]) - scipy.special.ndtr(x[left])
            out[~left] = scipy.special.ndtr(-x[~left]) - rv.sf(x[~left])
        return out

    return difference


def _gauss_legendre(f, edges: np.ndarray) -> np.ndarray:
    """Integrals of the vectorised ``f`` over each piece [edges[i], edges[i + 1]]."""
    mid = 0.5 * (edges[1:] + edges[:-1])
    half = 0.5 * (edges[1:] - edges[:-1])
    values = f(mid[:, None] + half[:, None] * _NODES[None, :])
    return half * (values @ _WEIGHTS)


def _panels(a: float, b: float, width: float) -> np.ndarray:
    return np.linspace(a, b, max(1, math.ceil((b - a) / width)) + 1)


def _w1_to_normal(family: str, parameter: float) -> float:
    """1-Wasserstein distance between the standardised ``family(parameter)`` and N(0, 1)."""
    loc, scale = _standardisation(_FAMILIES[family].law, parameter)
    difference = _difference(family, parameter, loc, scale)

    grid = np.linspace(-_CORE, _CORE, _ROOT_GRID)
    values = difference(grid)
    crossings = np.nonzero(values[:-1] * values[1:] < 0.0)[0]
    roots = [
        scipy.optimize.brentq(
            lambda x: float(difference(np.array([x]))[0]), grid[i], grid[i + 1], xtol=1e-14
        )
        for i in crossings
    ]
    # The symmetric gennorm laws have a non-smooth mode at 0: pieces shrink towards it.
    breaks = np.unique(np.concatenate([[-_CORE, 0.0, _CORE], -_GRADED, _GRADED, roots]))
    core = 0.0
    for a, b in zip(breaks[:-1], breaks[1:], strict=False):
        core += abs(float(_gauss_legendre(difference, _panels(a, b, _CORE_PANEL)).sum()))

    def tail(v: np.ndarray, side: float) -> np.ndarray:
        x = _CORE * np.exp(v)
        return np.abs(difference(side * x)) * x

    tail_edges = _panels(0.0, _TAIL_V, _TAIL_PANEL)
    right = _gauss_legendre(lambda v: tail(v, 1.0), tail_edges).sum()
    left = _gauss_legendre(lambda v: tail(v, -1.0), tail_edges).sum()
    return core + float(right + left)


def _w1_at(family: str, theta: float) -> float:
    if theta == 0.0:
        return 0.0  # the normal limit itself
    return _w1_to_normal(family, _FAMILIES[family].parameter(theta))


@functools.cache
def _max_distance(family: str) -> float:
    return _w1_at(family, _FAMILIES[family].theta_max)


@functools.lru_cache(maxsize=256)
def _solve(family: str, distance: float) -> NoiseDistribution:
    spec = _FAMILIES[family]
    theta = scipy.optimize.brentq(
        lambda t: _w1_at(family, t) - distance, 0.0, spec.theta_max, xtol=1e-13, rtol=1e-13
    )
    parameter = spec.parameter(theta)
    loc, scale = _standardisation(spec.law, parameter)
    return NoiseDistribution(family, distance, spec.parameter_name, parameter, loc, scale)


# ------------------------------------------------------------------------------ public API


def max_noise_distance(family: str) -> float:
    """Return the largest 1-Wasserstein distance to N(0, 1) a family reaches.

    It is the distance at the end of the family's shape range (see the module docstring):
    about 0.192 for ``"skewnorm"``, 0.314 for ``"exponnorm"``, 0.349 for
    ``"gennorm_steep"``, 0.153 for ``"gennorm_flat"`` and 0.524 for ``"t"``.

    Parameters
    ----------
    family
        One of :data:`NOISE_FAMILIES`.

    Returns
    -------
    float
        The distance; :func:`noise_distribution` accepts any smaller positive one.

    Raises
    ------
    ConfigError
        If ``family`` is unknown.
    TypeError
        If ``family`` is not a str.

    Examples
    --------
    >>> round(max_noise_distance("gennorm_flat"), 3)
    0.153
    """
    return _max_distance(_check_family(family, allow_normal=False))


def noise_distribution(family: str, distance: float) -> NoiseDistribution:
    """Find the standardised law of a family at a given 1-Wasserstein distance from N(0, 1).

    The shape parameter p solves W1(p) = ``distance``, where W1(p) is the integral of
    |F_p(x) - Phi(x)| over x for the law F_p of (Y - m) / s, Y ~ family(p), with scipy's
    exact mean m and variance s^2 (see the module docstring for the quadrature). Results are
    cached, so repeated calls with the same arguments are free.

    Parameters
    ----------
    family
        One of :data:`NOISE_FAMILIES`, or ``"normal"`` (with ``distance`` 0) for N(0, 1).
    distance
        Target 1-Wasserstein distance to N(0, 1), in (0, :func:`max_noise_distance`); the
        paper uses 0.03 to 0.15.

    Returns
    -------
    NoiseDistribution
        The law, its shape parameter and its standardising ``loc`` and ``scale``; W1 to
        N(0, 1) matches ``distance`` to about 1e-10.

    Raises
    ------
    ConfigError
        If ``family`` is unknown, ``distance`` is not finite or not > 0 (not 0 for
        ``"normal"``), or ``distance`` is at or beyond the family's
        :func:`max_noise_distance`.
    TypeError
        If ``family`` is not a str or ``distance`` is not a real number.

    Examples
    --------
    >>> law = noise_distribution("t", 0.06)
    >>> law.parameter_name, round(law.parameter, 2)
    ('df', 7.61)
    >>> round(float(law.rv.mean()), 6), round(float(law.rv.var()), 6)
    (0.0, 1.0)
    """
    family = _check_family(family, allow_normal=True)
    distance = _check_distance(distance, family)
    if family == NORMAL:
        return NoiseDistribution(NORMAL, 0.0, None, None, 0.0, 1.0)
    reach = _max_distance(family)
    if distance >= reach:
        further = [name for name in NOISE_FAMILIES if _max_distance(name) > distance]
        hint = f" or a family that reaches it ({', '.join(further)})" if further else ""
        raise ConfigError(
            f'"distance" must be below max_noise_distance("{family}") = {reach:.4f}, the '
            f"largest 1-Wasserstein distance to N(0, 1) along its shape range, got "
            f"{distance!r}; pass a smaller distance{hint}."
        )
    return _solve(family, distance)


def noise_images(
    family: str,
    distance: float,
    size: int,
    n: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw images of independent, standardised non-Gaussian noise (the robustness setting).

    Every pixel of every image is an independent draw of :func:`noise_distribution`'s law
    (mean 0, variance 1, at ``distance`` from N(0, 1)); there is no spatial correlation. The
    values are drawn in one call, in row-major order over (image, row, column), so the same
    ``rng`` state gives the same images.

    Parameters
    ----------
    family
        One of :data:`NOISE_FAMILIES`, or ``"normal"`` (with ``distance`` 0) for N(0, 1)
        pixels.
    distance
        1-Wasserstein distance of the pixel law to N(0, 1); the paper uses 0.03 to 0.15.
    size
        Side of the square images, in pixels.
    n
        Number of images.
    rng
        The generator every draw comes from (no global random state is used).

    Returns
    -------
    numpy.ndarray
        (n, size, size), float64.

    Raises
    ------
    ConfigError
        If ``family`` is unknown, ``size`` or ``n`` is < 1, or ``distance`` is not finite, not
        > 0 (not 0 for ``"normal"``) or beyond the family's :func:`max_noise_distance`.
    TypeError
        If ``family`` is not a str, ``distance`` is not a real number, ``size`` or ``n`` is
        not an int or ``rng`` is not a ``numpy.random.Generator``.

    Examples
    --------
    >>> import numpy as np
    >>> images = noise_images("exponnorm", 0.09, 16, 50, np.random.default_rng(0))
    >>> images.shape, images.dtype
    ((50, 16, 16), dtype('float64'))
    >>> bool(abs(images.mean()) < 0.05 and abs(images.var() - 1.0) < 0.05)
    True
    """
    family = _check_family(family, allow_normal=True)
    distance = _check_distance(distance, family)
    size = _count("size", size)
    n = _count("n", n)
    _check_rng(rng)
    law = noise_distribution(family, distance)
    return np.ascontiguousarray(law.sample((n, size, size), rng), dtype=np.float64)
