"""Brain masks from intensities, for scans the template could not be registered to.

The template's brain mask, warped to the scan by the affine registration, is the first
choice (:mod:`medsi.transforms.spatial`); a mask the user gives wins over both. When the
registration fails its quality check, :func:`intensity_brain_mask` finds the head from the
intensities alone: Otsu's threshold on log intensities, an opening that cuts thin bridges
(skull, scalp, eyes), the largest connected component, a closing and hole filling. With the
skull still on, this is a head mask rather than a brain mask, and the report says which mask
was used.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medsi.errors import InputDataError

__all__ = ["intensity_brain_mask", "otsu_threshold"]


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut that maximises the between-class variance of a histogram.

    Written here (a few lines) rather than pulled from an image library for one function.

    Examples
    --------
    >>> import numpy as np
    >>> v = np.concatenate([np.zeros(1000), np.full(1000, 10.0)])
    >>> 0 < otsu_threshold(v) < 10
    True
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[1:][np.argmax(between)])


def _ball(radius_mm: float, spacing) -> np.ndarray:
    half = [max(0, int(round(radius_mm / s))) for s in spacing]
    grids = np.meshgrid(
        *[np.arange(-h, h + 1) * s for h, s in zip(half, spacing, strict=True)], indexing="ij"
    )
    return sum(g**2 for g in grids) <= radius_mm**2


def intensity_brain_mask(
    image: np.ndarray,
    spacing=(1.0, 1.0, 1.0),
    valid: np.ndarray | None = None,
    opening_mm: float = 3.0,
) -> np.ndarray:
    """A brain (or head) mask from a 3-D image's intensities alone.

    Parameters
    ----------
    image
        (X, Y, Z) intensities.
    spacing
        Voxel sizes in mm along X, Y, Z (structuring elements are balls in mm).
    valid
        (X, Y, Z) bool, voxels with real data (NaN/Inf voxels are False); default all.
    opening_mm
        Radius of the opening that separates the brain from thin bright structures.

    Returns
    -------
    numpy.ndarray
        (X, Y, Z) bool.

    Raises
    ------
    InputDataError
        If nothing stands out of the background (an empty or constant image).
    """
    image = np.asarray(image, dtype=np.float64)
    valid = np.ones(image.shape, bool) if valid is None else np.asarray(valid, bool)
    values = image[valid]
    if values.size == 0 or np.ptp(values) == 0:
        raise InputDataError(
            "the image holds no contrast (constant or empty), so no brain mask can be found; "
            "check the file, or pass --mask FILE."
        )
    # Otsu on log intensities: bright fluid (CSF, eyes) would otherwise pull the cut between
    # tissue and fluid instead of between the head and the background
    shifted = np.log1p(np.clip(image - values.min(), 0, None))
    foreground = (shifted > otsu_threshold(shifted[valid])) & valid
    ball = _ball(opening_mm, spacing)
    opened = ndimage.binary_opening(foreground, structure=ball)
    if not opened.any():
        opened = foreground
    labels, count = ndimage.label(opened)
    if count == 0:
        raise InputDataError(
            "no foreground was found above Otsu's threshold; check the file or pass --mask FILE."
        )
    sizes = np.bincount(labels.ravel())[1:]
    largest = labels == (np.argmax(sizes) + 1)
    closed = ndimage.binary_closing(largest, structure=ball, border_value=0)
    filled = ndimage.binary_fill_holes(closed)
    # fill holes slice by slice too: a cavity open at the volume's edge escapes the 3-D fill
    for z in range(filled.shape[2]):
        filled[:, :, z] = ndimage.binary_fill_holes(filled[:, :, z])
    return filled & valid
