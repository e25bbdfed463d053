"""Pieces shared by the NIfTI and DICOM readers: the result type and the final checks."""

from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from medsi.errors import ConfigError, InputDataError

MIN_AXIS_VOXELS = 8
"""Fewest voxels a loaded volume may have along each of its three axes."""

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Turns a DICOM (LPS+) voxel-to-world matrix into a NIfTI/MONAI (RAS+) one, and back."""


class Scan(NamedTuple):
    """One loaded 3-D scan, before it is wrapped in a ``MetaTensor``.

    Attributes
    ----------
    array
        Intensities, shape (X, Y, Z), float32, with the file's scaling applied once; voxels
        that were NaN or infinite hold 0.
    valid
        Shape (X, Y, Z), bool: False where the file held NaN or an infinite value.
    affine
        (4, 4) float64 voxel-to-world matrix, RAS+ millimetres: ``affine @ (i, j, k, 1)`` is
        the world position of the centre of voxel ``array[i, j, k]``.
    meta
        What was read and done; see the package docstring for the keys.
    """

    array: np.ndarray
    valid: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any]


def one_line(error: BaseException) -> str:
    """Return an exception's message on one line, for quoting inside another message."""
    return " ".join(str(error).split())


def as_path(path: str | PathLike, name: str = "path") -> Path:
    """Return ``path`` as a ``Path`` that exists, or raise.

    Parameters
    ----------
    path
        A file or folder name.
    name
        The argument's name, for messages.

    Returns
    -------
    Path
        The same location.

    Raises
    ------
    TypeError
        If ``path`` is not a string or path-like object.
    InputDataError
        If nothing exists at ``path``.
    """
    if not isinstance(path, str | PathLike):
        raise TypeError(
            f'"{name}" must be a file or folder name (str or path-like), got '
            f"{type(path).__name__}; pass the location of a NIfTI file or a DICOM folder."
        )
    location = Path(path)
    if not location.exists():
        raise InputDataError(
            f'"{location}" does not exist; pass the path of a NIfTI file or of a folder '
            "holding a DICOM series."
        )
    return location


def check_volume_index(volume: int) -> int:
    """Return ``volume`` if it can index a volume of a 4-D file, else raise.

    Raises
    ------
    TypeError
        If ``volume`` is not an integer.
    ConfigError
        If ``volume`` is negative.
    """
    if isinstance(volume, bool) or not isinstance(volume, int | np.integer):
        raise TypeError(
            f'"volume" must be an int, got {type(volume).__name__}; pass the 0-based index '
            "of the volume to use in a 4-D file, such as 0."
        )
    if volume < 0:
        raise ConfigError(
            f'"volume" must be 0 or more, got {volume}; pass the 0-based index of the volume '
            "to use in a 4-D file (--volume)."
        )
    return int(volume)


def check_spatial_shape(shape: tuple[int, ...], source: str) -> None:
    """Raise if a 3-D volume is too small along any axis.

    Parameters
    ----------
    shape
        (X, Y, Z) voxel counts.
    source
        The file or folder, for messages.

    Raises
    ------
    InputDataError
        If an axis has fewer than :data:`MIN_AXIS_VOXELS` voxels.
    """
    if min(shape) < MIN_AXIS_VOXELS:
        raise InputDataError(
            f'"{source}" is too small: the volume must have at least {MIN_AXIS_VOXELS} voxels '
            f"along each axis, got shape {tuple(int(n) for n in shape)}; pass a whole 3-D "
            "scan rather than a single slice or a thin slab."
        )


def check_affine(affine: np.ndarray) -> bool:
    """Return whether a 4x4 voxel-to-world matrix is finite and non-degenerate.

    A matrix is usable when all its entries are finite and its 3x3 part has no singular value
    below 1e-6 mm (no voxel axis of zero length, no two axes along one line).
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        return False
    return bool(np.linalg.svd(affine[:3, :3], compute_uv=False).min() > 1e-6)


def mask_nonfinite(array: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Replace NaN and infinite voxels by 0 and say where they were.

    Parameters
    ----------
    array
        Intensities of any shape, real dtype.

    Returns
    -------
    clean : numpy.ndarray
        float32 copy of ``array`` with 0 where it was not finite.
    valid : numpy.ndarray
        bool, same shape: True where ``array`` was finite (after the cast to float32, so
        values beyond the float32 range count as infinite).
    count : int
        Number of voxels that were not finite.

    Examples
    --------
    >>> clean, valid, count = mask_nonfinite(np.array([1.0, np.nan, np.inf]))
    >>> clean.tolist(), valid.tolist(), count
    ([1.0, 0.0, 0.0], [True, False, False], 2)
    """
    with np.errstate(over="ignore", invalid="ignore"):
        clean = np.asarray(array).astype(np.float32)  # always a copy
    valid = np.isfinite(clean)
    count = int(valid.size - np.count_nonzero(valid))
    if count:
        clean[~valid] = 0.0
    return clean, valid, count


def finish_scan(volume: np.ndarray, affine: np.ndarray, meta: dict[str, Any], source: str) -> Scan:
    """Mask non-finite voxels, fill the common meta keys and return the :class:`Scan`.

    Parameters
    ----------
    volume
        (X, Y, Z) intensities, scaled, any real dtype.
    affine
        (4, 4) RAS+ voxel-to-world matrix.
    meta
        Format-specific keys already filled, with a ``"notes"`` list.
    source
        The file or folder, for messages.

    Raises
    ------
    InputDataError
        If the volume is too small or holds no finite voxel.
    """
    check_spatial_shape(volume.shape, source)
    clean, valid, count = mask_nonfinite(volume)
    if count == valid.size:
        raise InputDataError(
            f'"{source}" holds no finite voxel: all {count} values are NaN or infinite; '
            "check the file's scaling (scl_slope/scl_inter or RescaleSlope) or export it again."
        )
    if count:
        meta["notes"].append(
            f"{count} voxel(s) were NaN or infinite: set to 0 and marked invalid in the "
            "valid mask, so they are kept out of the model and the statistics"
        )
    affine = np.asarray(affine, dtype=np.float64)
    meta.update(
        {
            "spatial_shape": np.asarray(clean.shape, dtype=np.int64),
            "original_affine": affine.copy(),
            "spacing": np.linalg.norm(affine[:3, :3], axis=0),
            "space": "RAS",
            "nonfinite_voxels": count,
        }
    )
    return Scan(array=clean, valid=valid, affine=affine, meta=meta)
