"""The conditioning events of the selective test, as per-pixel conditions (DESIGN.md sections 1-2).

``full``: every pixel keeps its observed state, i.e. the selected set equals the observed one.
``component``: every pixel of the region C stays selected and every pixel touching C
from outside stays unselected; then C is still a union of connected components of the
selected set. Both are conjunctions of per-pixel conditions, so over several slices
the event holds exactly when it holds on each slice.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medsi.errors import ConfigError

__all__ = ["outer_boundary", "check_region", "event_flags", "connected_regions"]


def _structure(ndim: int, connectivity: int) -> np.ndarray:
    if connectivity not in range(1, ndim + 1):
        raise ConfigError(
            f'"connectivity" must be an integer in 1..{ndim} for {ndim}-D images, got '
            f"{connectivity!r}; pass 1 (faces) or {ndim} (faces, edges and corners)."
        )
    return ndimage.generate_binary_structure(ndim, connectivity)


def outer_boundary(region: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Pixels outside ``region`` that touch it under the given connectivity.

    Parameters
    ----------
    region
        bool image (any dimension).
    connectivity
        1 for face neighbours (4 in 2-D), ``ndim`` for all neighbours (8 in 2-D).

    Returns
    -------
    numpy.ndarray
        bool, same shape as ``region``.

    Examples
    --------
    >>> import numpy as np
    >>> r = np.zeros((3, 3), bool); r[1, 1] = True
    >>> int(outer_boundary(r, 1).sum()), int(outer_boundary(r, 2).sum())
    (4, 8)
    """
    region = np.asarray(region, dtype=bool)
    grown = ndimage.binary_dilation(region, structure=_structure(region.ndim, connectivity))
    return grown & ~region


def connected_regions(selected: np.ndarray, connectivity: int = 1) -> list[np.ndarray]:
    """The connected components of a selected set, largest first, as bool masks."""
    labels, count = ndimage.label(
        np.asarray(selected, bool), _structure(selected.ndim, connectivity)
    )
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    order = np.argsort(-sizes, kind="stable")
    return [labels == (i + 1) for i in order]


def check_region(region: np.ndarray, observed: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Check that ``region`` is a non-empty union of connected components of ``observed``.

    Parameters
    ----------
    region
        bool image, the region to test.
    observed
        bool image, the observed selected set.
    connectivity
        As in :func:`outer_boundary`.

    Returns
    -------
    numpy.ndarray
        The region's outer boundary (bool), for :func:`event_flags`.

    Raises
    ------
    ConfigError
        If the region is empty, has another shape, has pixels that were not selected,
        or touches selected pixels outside it.
    """
    region = np.asarray(region)
    if region.shape != observed.shape:
        raise ConfigError(
            f'"region" has shape {region.shape} but the image is {observed.shape}; '
            "pass a mask of the image's shape."
        )
    region = region.astype(bool)
    if not region.any():
        raise ConfigError('"region" is empty; pass a mask with at least one selected pixel.')
    if (region & ~observed).any():
        raise ConfigError(
            f'"region" has {int((region & ~observed).sum())} pixels that the model did not '
            "select; pass one of the connected components of the selected set."
        )
    boundary = outer_boundary(region, connectivity)
    if (boundary & observed).any():
        raise ConfigError(
            '"region" is only part of a connected component of the selected set; pass whole '
            "components (see medsi.si.connected_regions)."
        )
    return boundary


def event_flags(
    selected: np.ndarray, observed: np.ndarray, region: np.ndarray, boundary: np.ndarray
) -> np.ndarray:
    """Whether the ``full`` and ``component`` events hold for each selected set.

    Parameters
    ----------
    selected
        (K, ...) bool, the selected sets along the line.
    observed
        (...) bool, the observed selected set.
    region, boundary
        (...) bool, the tested region and its outer boundary.

    Returns
    -------
    numpy.ndarray
        (K, 2) bool: column 0 the ``full`` event, column 1 the ``component`` event.
    """
    k = selected.shape[0]
    flat = selected.reshape(k, -1)
    full = (flat == observed.reshape(1, -1)).all(1)
    component = flat[:, region.reshape(-1)].all(1) & ~flat[:, boundary.reshape(-1)].any(1)
    return np.stack([full, component], axis=1)
