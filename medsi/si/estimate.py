"""Estimate the noise covariance from residuals of normal images (DESIGN.md section 2).

The residuals are held-out normal images minus the mean normal image at the same slice
position, so that what is left is noise e ~ N(0, S) (DESIGN.md section 1). Three kinds are
estimated, matching :mod:`medsi.si.covariance`:

- ``isotropic``: the pooled variance of every pixel of every residual;
- ``diagonal``: one variance per pixel, floored at a small fraction of the median;
- ``stationary``: the empirical autocovariance for offsets up to ``radius``, averaged over
  images and positions, symmetrised and made positive semidefinite.

Degrees of freedom: removing a mean estimated from ``m`` images leaves ``m - 1`` degrees of
freedom, so residuals about ``P`` position means estimated from ``N`` images carry
``dof = N - P``. Sums of products over images are divided by ``dof``, not by ``N``, which makes
every estimate unbiased (before the floor and the positive-semidefinite correction). The
default ``dof = N - 1`` is right for residuals about one common mean.

Examples
--------
>>> import numpy as np
>>> from medsi.si.covariance import Isotropic
>>> images = Isotropic(4.0).sample((8, 8), np.random.default_rng(0), size=500)
>>> residuals = images - images.mean(axis=0)
>>> cov = estimate_covariance(residuals, "isotropic")
>>> round(cov.variance, 1)
4.0
"""

from __future__ import annotations

import enum
import numbers

import numpy as np
import scipy.fft

from medsi.errors import ConfigError
from medsi.si.covariance import (
    Covariance,
    Diagonal,
    Isotropic,
    Stationary,
    _kernel_spectrum,
    real_array,
)
from medsi.si.options import coerce_option

__all__ = ["CovarianceKind", "estimate_covariance"]

# Grid (per axis) on which the clipping of the spectrum is iterated, and the finer grid on
# which the spectral density is checked; both at least a few times the kernel's size.
_CLIP_GRID = 64
_CHECK_GRID = 512
_CLIP_ITERATIONS = 20


class CovarianceKind(enum.StrEnum):
    """Which covariance model :func:`estimate_covariance` fits (DESIGN.md section 2)."""

    ISOTROPIC = "isotropic"
    DIAGONAL = "diagonal"
    STATIONARY = "stationary"


def estimate_covariance(
    residuals: np.ndarray,
    kind: str | CovarianceKind,
    radius: int = 2,
    *,
    dof: int | None = None,
    floor: float = 1e-3,
    mask: np.ndarray | None = None,
) -> Covariance:
    """Estimate the noise covariance S from residual images.

    Parameters
    ----------
    residuals
        (N, H, W), real, finite: held-out normal images minus the mean normal image at the
        same slice position (never images the model was trained on).
    kind
        ``"isotropic"`` (S = sigma^2 I, sigma^2 the pooled variance), ``"diagonal"`` (one
        variance per pixel) or ``"stationary"`` (an autocovariance kernel of half-width
        ``radius``).
    radius
        Half-width in pixels of the stationary kernel, >= 0 and below both image sides; the
        kernel is (2 radius + 1, 2 radius + 1). Checked for every kind, used by
        ``"stationary"`` only.
    dof
        Degrees of freedom of the residuals: N minus the number of means that were
        subtracted (N - P for P slice positions with at least one image each); sums of
        products over images are divided by it. None means N - 1 (one common mean removed).
    floor
        ``"diagonal"`` only: each pixel variance is at least ``floor`` times the median of the
        positive pixel variances (pixels of constant background have none), in (0, 1].
    mask
        (H, W) or (N, H, W) bool: the pixels the noise is estimated on (e.g. the brain, so
        that the skull and background, whose variation between subjects is far larger, do
        not inflate the brain's estimate); pixel pairs count only when both are inside. The
        tests use pixels of this region, so the estimate must describe it. None: all pixels.

    Returns
    -------
    Covariance
        :class:`~medsi.si.covariance.Isotropic`, :class:`~medsi.si.covariance.Diagonal` of
        shape (H, W), or :class:`~medsi.si.covariance.Stationary`. The stationary kernel
        c(d) = sum over images and pixel pairs (u, u + d) of r(u) r(u + d), divided by dof
        times the number of pairs, is point-symmetric; when its spectral density is negative
        somewhere, its spectrum is clipped at 0 on a periodic grid and the kernel cut back to
        the window (alternately, a few times), then the centre is raised by the remaining
        negative part plus a bound on the density's dip between grid points, so the result is
        positive semidefinite on every image size.

    Raises
    ------
    TypeError
        If ``residuals`` is not a real numpy array, or ``radius``, ``dof`` or ``floor`` has the
        wrong type.
    ConfigError
        If ``kind`` is unknown, ``residuals`` is not 3-D, holds fewer than 2 images or NaN or
        inf values, or is zero everywhere (no noise), ``radius`` is negative or not below both
        image sides, ``dof`` is not in [1, N], or ``floor`` is not in (0, 1].
    """
    kind = coerce_option(CovarianceKind, kind, "kind")
    residuals = _checked_residuals(residuals)
    n_images, height, width = residuals.shape
    radius = _checked_radius(radius, (height, width))
    dof = _checked_dof(dof, n_images)
    weights = _checked_mask(mask, residuals.shape)
    match kind:
        case CovarianceKind.ISOTROPIC:
            total = float(np.vdot(residuals * weights, residuals))
            _check_noise(total)
            return Isotropic(total * n_images / (dof * float(weights.sum())))
        case CovarianceKind.DIAGONAL:
            floor = _checked_floor(floor)
            counts = weights.sum(axis=0)
            variance_map = np.einsum("nhw,nhw,nhw->hw", residuals, residuals, weights)
            variance_map = variance_map * n_images / (dof * np.maximum(counts, 1))
            positive = variance_map[variance_map > 0]
            _check_noise(float(positive.sum()))
            return Diagonal(np.maximum(variance_map, floor * float(np.median(positive))))
        case CovarianceKind.STATIONARY:
            kernel = _autocovariance(residuals, radius, dof, weights)
            _check_noise(float(kernel[radius, radius]))
            return Stationary(_positive_semidefinite(kernel))
        case _:  # pragma: no cover - coerce_option admits only the members above
            raise ConfigError(f'"kind" {kind!r} has no estimator; pass one of {_KINDS}.')


_KINDS = ", ".join(repr(k.value) for k in CovarianceKind)


def _checked_residuals(residuals) -> np.ndarray:
    """Return ``residuals`` as float64 (N, H, W) after checking type, shape and values."""
    residuals = real_array(residuals, "residuals")
    if residuals.ndim != 3 or min(residuals.shape[1:], default=0) < 1:
        raise ConfigError(
            f'"residuals" must be a non-empty stack of images (N, H, W), got shape '
            f"{residuals.shape}; stack the residual images along axis 0."
        )
    if residuals.shape[0] < 2:
        raise ConfigError(
            f'"residuals" must hold at least 2 images, got {residuals.shape[0]}; a covariance '
            "cannot be estimated from one image, pass more held-out normal images."
        )
    residuals = residuals.astype(np.float64, copy=False)
    if not np.isfinite(residuals).all():
        bad = int(np.count_nonzero(~np.isfinite(residuals)))
        raise ConfigError(
            f'"residuals" must be finite, got {bad} NaN or inf values; remove or repair the '
            "images they come from."
        )
    return residuals


def _checked_mask(mask, shape: tuple[int, int, int]) -> np.ndarray:
    """Return the mask as float weights (N, H, W) (all ones for None)."""
    if mask is None:
        return np.ones(shape)
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape not in (shape, shape[1:]):
        raise ConfigError(
            f'"mask" must be a bool array of shape {shape[1:]} or {shape}, got {mask.dtype} '
            f"{mask.shape}; pass the brain mask of the residual images."
        )
    if not mask.any():
        raise ConfigError('"mask" is empty; pass the pixels to estimate the noise on.')
    return np.broadcast_to(mask, shape).astype(np.float64)


def _checked_radius(radius, shape: tuple[int, int]) -> int:
    """Return ``radius`` as an int in [0, min(H, W) - 1]."""
    if isinstance(radius, bool) or not isinstance(radius, numbers.Integral):
        raise TypeError(
            f'"radius" must be an int, got {type(radius).__name__}; pass a half-width in '
            "pixels such as 2."
        )
    if not 0 <= radius < min(shape):
        raise ConfigError(
            f'"radius" must be in [0, {min(shape) - 1}] (below both sides of the {shape[0]} x '
            f"{shape[1]} images), got {radius}; pass a smaller half-width such as 2."
        )
    return int(radius)


def _checked_dof(dof, n_images: int) -> int:
    """Return the degrees of freedom, N - 1 for None, after checking 1 <= dof <= N."""
    if dof is None:
        return n_images - 1
    if isinstance(dof, bool) or not isinstance(dof, numbers.Integral):
        raise TypeError(
            f'"dof" must be an int or None, got {type(dof).__name__}; pass N minus the number '
            "of means subtracted."
        )
    if not 1 <= dof <= n_images:
        raise ConfigError(
            f'"dof" must be in [1, {n_images}] for {n_images} residual images, got {dof}; pass '
            "N minus the number of means subtracted (N - 1 for one common mean)."
        )
    return int(dof)


def _checked_floor(floor) -> float:
    """Return ``floor`` as a float in (0, 1]."""
    if isinstance(floor, bool) or not isinstance(floor, numbers.Real):
        raise TypeError(
            f'"floor" must be a real number, got {type(floor).__name__}; pass e.g. 1e-3.'
        )
    if not 0 < float(floor) <= 1:
        raise ConfigError(
            f'"floor" must be in (0, 1], got {floor!r}; pass a small fraction such as 1e-3.'
        )
    return float(floor)


def _check_noise(total: float) -> None:
    """Refuse residuals without any variation."""
    if not total > 0:
        raise ConfigError(
            '"residuals" must vary, got residuals that are zero everywhere; pass held-out '
            "images minus their mean, not the mean itself or copies of one image."
        )


def _autocovariance(
    residuals: np.ndarray, radius: int, dof: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """Return the point-symmetric empirical autocovariance kernel (2r + 1, 2r + 1).

    Entry (r + dy, r + dx) is the sum over images and over the pixel pairs (u, u + d) inside
    the image (and inside the mask) of r(u) r(u + d), divided by the number of such pairs
    times ``dof / N`` (the pairs of one image when there is no mask: ``dof`` times the pairs
    per image).
    """
    n_images, height, width = residuals.shape
    if weights is None:
        weights = np.ones(residuals.shape)
    kernel = np.zeros((2 * radius + 1, 2 * radius + 1))
    for dy in range(radius + 1):
        for dx in range(-radius, radius + 1):
            if dy == 0 and dx < 0:
                continue  # the mirror image of (0, -dx)
            cols_a = slice(0, width - dx) if dx >= 0 else slice(-dx, width)
            cols_b = slice(dx, width) if dx >= 0 else slice(0, width + dx)
            a = residuals[:, : height - dy, cols_a]
            b = residuals[:, dy:, cols_b]
            both = weights[:, : height - dy, cols_a] * weights[:, dy:, cols_b]
            pairs = float(both.sum())
            if pairs == 0:
                raise ConfigError(
                    f'"mask" holds no pixel pair at offset ({dy}, {dx}); pass a larger mask or '
                    "a smaller radius."
                )
            value = float(np.einsum("nhw,nhw,nhw->", a, b, both)) * n_images / (dof * pairs)
            kernel[radius + dy, radius + dx] = value
            kernel[radius - dy, radius - dx] = value
    return kernel


def _density_lower_bound(kernel: np.ndarray) -> float:
    """Return a lower bound of the kernel's spectral density over all frequencies.

    The density p(w) = sum_d c(d) cos(w . d) is sampled on a periodic grid of spacing
    h = 2 pi / M per axis. A global minimum of the smooth periodic p is a critical point, and
    the nearest grid point lies within |delta|^2 <= 2 (h / 2)^2 of it, so p there exceeds the
    minimum by at most |delta|^2 / 2 times the Hessian norm, itself at most
    sum_d |d|^2 |c(d)|.
    """
    radius = kernel.shape[0] // 2
    grid = max(_CHECK_GRID, 8 * kernel.shape[0])
    spectrum = _kernel_spectrum(kernel, (grid, grid), half=True)
    dy, dx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    hessian_bound = float(np.sum((dy**2 + dx**2) * np.abs(kernel)))
    step = np.pi / grid  # half the grid spacing
    return float(spectrum.min()) - step**2 * hessian_bound


def _positive_semidefinite(kernel: np.ndarray) -> np.ndarray:
    """Return a kernel near ``kernel``, of the same window, whose spectral density is >= 0.

    Alternates clipping the spectrum at 0 on a periodic grid with cutting the kernel back to
    its window, then raises the centre (adding a constant to the density) by what is still
    negative according to :func:`_density_lower_bound`.
    """
    radius = kernel.shape[0] // 2
    size = kernel.shape[0]
    if _density_lower_bound(kernel) >= 0:
        return kernel
    grid = max(_CLIP_GRID, 4 * size)
    result = kernel.copy()
    for _ in range(_CLIP_ITERATIONS):
        spectrum = np.clip(_kernel_spectrum(result, (grid, grid)), 0.0, None)
        wrapped = np.roll(scipy.fft.ifft2(spectrum).real, (radius, radius), axis=(0, 1))
        result = wrapped[:size, :size]
        result = 0.5 * (result + result[::-1, ::-1])
        if _density_lower_bound(result) >= 0:
            return result
    lower = _density_lower_bound(result)
    if lower < 0:
        result = result.copy()
        result[radius, radius] += -lower * (1 + 1e-9)
    return result
