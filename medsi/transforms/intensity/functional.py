"""Robust intensity standardisation over brain voxels (DESIGN.md section 4).

Lesions are unknown when a scan is standardised, so the centre and scale must not be pulled
by them: the median and the median absolute deviation (scaled to a normal sd), or a trimmed
mean and sd, of the brain voxels.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from medsi.errors import ConfigError, InputDataError

__all__ = ["robust_centre_scale", "robust_standardise", "STANDARDISATION_METHODS"]

STANDARDISATION_METHODS = ("median-mad", "trimmed")
"""``median-mad``: median and 1.4826 x MAD; ``trimmed``: mean and sd of the voxels between
the 5th and 95th percentiles, the sd rescaled to that of a normal law trimmed the same way."""

_TRIM = 0.05


def robust_centre_scale(values: np.ndarray, method: str = "median-mad") -> tuple[float, float]:
    """Centre and scale of intensities that resist a minority of outliers (lesions).

    Parameters
    ----------
    values
        1-D intensities (e.g. the brain voxels of a scan), finite.
    method
        One of :data:`STANDARDISATION_METHODS`.

    Returns
    -------
    centre, scale : float
        scale > 0, in the units of ``values``; for normal data both estimate the mean and sd.

    Raises
    ------
    ConfigError
        If ``method`` is unknown.
    InputDataError
        If there are fewer than 10 values or they are (almost) constant.

    Examples
    --------
    >>> import numpy as np
    >>> v = np.random.default_rng(0).normal(10.0, 2.0, 100_000)
    >>> [round(x, 1) for x in robust_centre_scale(v)]
    [10.0, 2.0]
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size < 10:
        raise InputDataError(
            f"robust standardisation needs at least 10 brain voxels, got {values.size}; check "
            "the brain mask (pass --mask FILE if the automatic one is wrong)."
        )
    match method:
        case "median-mad":
            centre = float(np.median(values))
            scale = float(stats.median_abs_deviation(values, scale="normal"))
        case "trimmed":
            low, high = np.quantile(values, [_TRIM, 1 - _TRIM])
            kept = values[(values >= low) & (values <= high)]
            centre = float(kept.mean())
            z = stats.norm.ppf(1 - _TRIM)
            # variance of N(0, 1) truncated to [-z, z]
            trimmed_var = 1 - 2 * z * stats.norm.pdf(z) / (1 - 2 * _TRIM)
            scale = float(kept.std() / np.sqrt(trimmed_var))
        case _:
            raise ConfigError(
                f'"method" must be one of {", ".join(STANDARDISATION_METHODS)}, got {method!r}.'
            )
    if not scale > 1e-12 * max(1.0, abs(centre)):
        raise InputDataError(
            f"the brain voxels are (almost) constant (centre {centre:g}, scale {scale:g}), so "
            "they cannot be standardised; check the brain mask and the image."
        )
    return centre, scale


def robust_standardise(
    image: np.ndarray, mask: np.ndarray, method: str = "median-mad"
) -> tuple[np.ndarray, float, float]:
    """Standardise an image by the robust centre and scale of its masked voxels.

    Parameters
    ----------
    image
        Intensities, any shape.
    mask
        bool, same shape: the voxels the centre and scale are computed from (the brain).
    method
        One of :data:`STANDARDISATION_METHODS`.

    Returns
    -------
    standardised : numpy.ndarray
        (image - centre) / scale, float32, every voxel (also outside the mask).
    centre, scale : float

    Raises
    ------
    ConfigError
        If the shapes differ or ``method`` is unknown.
    InputDataError
        As :func:`robust_centre_scale`.
    """
    image = np.asarray(image)
    mask = np.asarray(mask, dtype=bool)
    if image.shape != mask.shape:
        raise ConfigError(
            f'"mask" has shape {mask.shape} but the image is {image.shape}; pass a mask of '
            "the image's shape."
        )
    centre, scale = robust_centre_scale(image[mask], method)
    standardised = ((image.astype(np.float64) - centre) / scale).astype(np.float32)
    return standardised, centre, scale
