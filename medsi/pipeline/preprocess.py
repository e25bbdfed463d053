"""Bring a scan onto the model grid: load, register, mask, standardise (DESIGN.md section 4).

One function, :func:`prepare_scan`, used both by ``medsi run`` and to make the training
slices of a bundle, so that a model always sees its inputs prepared the same way.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from medsi.errors import InputDataError
from medsi.transforms.intensity import robust_standardise
from medsi.transforms.io import load_scan
from medsi.transforms.mask import intensity_brain_mask
from medsi.transforms.spatial import (
    ModelGrid,
    Registration,
    identity_registration,
    register_affine,
    resample_to_grid,
)

__all__ = ["PreparedScan", "prepare_scan", "prepare_volume", "MIN_PLANE_BRAIN_FRACTION"]

MIN_PLANE_BRAIN_FRACTION = 0.25
"""A plane is kept when its brain area is at least this share of the largest brain plane's
area in the template (smaller caps of the brain give too few pixels to learn or test)."""


@dataclasses.dataclass(frozen=True)
class PreparedScan:
    """A scan on the model grid, ready for the model, with the way back to its own grid.

    Attributes
    ----------
    path
        The input file or folder.
    slices
        (P, H, W) float64: every plane of the model grid, robust-standardised (H along the
        template's x axis, W along y; plane index = slice position).
    brain
        (P, H, W) bool: voxels that may be selected: the brain mask, on planes that are kept,
        where the scan has valid data.
    kept
        (P,) bool: planes that hold enough brain and were acquired.
    covered
        (H, W, P) bool, the grid voxels backed by acquired data (as from the resampling).
    registration
        How the template was aligned to the scan.
    matrix
        (4, 4) template-world to scan-world map the resampling used (the registration's, or
        its centre-of-mass start when the registration failed its check).
    grid
        The model grid.
    native_affine, native_shape
        Voxel-to-world (RAS+) matrix and shape of the input's own grid.
    mask_source
        Which mask was used, in words.
    standardisation
        ``method``, ``centre`` and ``scale`` (input units).
    notes
        Plain-English lines saying what was done.
    meta
        The loader's metadata (source format, DICOM attributes, ...).
    """

    path: Path
    slices: np.ndarray
    brain: np.ndarray
    kept: np.ndarray
    covered: np.ndarray
    registration: Registration
    matrix: np.ndarray
    grid: ModelGrid
    native_affine: np.ndarray
    native_shape: tuple[int, int, int]
    mask_source: str
    standardisation: dict
    notes: tuple[str, ...]
    meta: dict

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one native voxel, mm^3."""
        return float(abs(np.linalg.det(self.native_affine[:3, :3])))


def _user_mask_on_grid(mask_path, scan_affine, scan_shape, matrix, grid) -> np.ndarray:
    mask_scan = load_scan(mask_path)
    mask = mask_scan.array > 0.5
    if mask.shape != tuple(scan_shape) or not np.allclose(mask_scan.affine, scan_affine, atol=1e-3):
        raise InputDataError(
            f'the mask "{mask_path}" must be on the scan\'s voxel grid (shape {tuple(scan_shape)}'
            f", the same affine), got shape {mask.shape}; resample the mask to the scan first."
        )
    if not mask.any():
        raise InputDataError(f'the mask "{mask_path}" is empty; pass a mask of the brain.')
    on_grid, _, _ = resample_to_grid(mask.astype(np.float32), scan_affine, matrix, grid, order=0)
    return on_grid > 0.5


def prepare_scan(
    path: str | os.PathLike,
    grid: ModelGrid,
    *,
    registered: bool = False,
    mask: str | os.PathLike | None = None,
    volume: int = 0,
    series: str | None = None,
    standardisation: str = "median-mad",
    min_plane_brain_fraction: float = MIN_PLANE_BRAIN_FRACTION,
) -> PreparedScan:
    """Load a scan and bring it onto the model grid.

    Steps: load (NIfTI or DICOM, :func:`~medsi.transforms.io.load_scan`); affine registration
    of the template to the scan (skipped with ``registered``); linear resampling onto the
    grid; brain mask (a user mask wins; else the template's brain mask when the registration
    passed its check; else a mask from the intensities); robust standardisation over the
    brain voxels; planes kept when they hold enough brain.

    Parameters
    ----------
    path
        NIfTI file, DICOM folder or one file of a DICOM series.
    grid
        The model grid of the bundle.
    registered
        The scan is already in template space: no registration.
    mask
        NIfTI brain mask on the scan's own grid; wins over the automatic masks.
    volume, series
        Which volume of a 4-D file, which DICOM series.
    standardisation
        ``"median-mad"`` or ``"trimmed"``.
    min_plane_brain_fraction
        See :data:`MIN_PLANE_BRAIN_FRACTION`.

    Returns
    -------
    PreparedScan

    Raises
    ------
    InputDataError
        If the input is unreadable or inconsistent, or holds no usable brain.
    ConfigError
        If ``volume`` or ``series`` does not fit the input.
    """
    scan = load_scan(path, volume=volume, series=series)
    return prepare_volume(
        scan.array,
        scan.affine,
        grid,
        valid=scan.valid,
        meta=scan.meta,
        path=path,
        registered=registered,
        mask=mask,
        standardisation=standardisation,
        min_plane_brain_fraction=min_plane_brain_fraction,
    )


def prepare_volume(
    array: np.ndarray,
    affine: np.ndarray,
    grid: ModelGrid,
    *,
    valid: np.ndarray | None = None,
    meta: dict | None = None,
    path: str | os.PathLike = "<array>",
    registered: bool = False,
    mask: str | os.PathLike | None = None,
    standardisation: str = "median-mad",
    min_plane_brain_fraction: float = MIN_PLANE_BRAIN_FRACTION,
) -> PreparedScan:
    """:func:`prepare_scan` for a volume already in memory (e.g. a phantom).

    Parameters
    ----------
    array
        (X, Y, Z) intensities.
    affine
        (4, 4) voxel-to-world RAS+ matrix.
    grid
        The model grid.
    valid
        (X, Y, Z) bool, voxels with data; default all.
    meta
        Metadata to carry (``notes``, ``spacing``, source attributes).
    path
        Name of the input for messages and the report.
    registered, mask, standardisation, min_plane_brain_fraction
        As :func:`prepare_scan`.

    Returns
    -------
    PreparedScan
    """
    meta = dict(meta or {})
    array = np.asarray(array, dtype=np.float32)
    valid = np.ones(array.shape, bool) if valid is None else np.asarray(valid, bool)
    affine = np.asarray(affine, dtype=np.float64)
    meta.setdefault("spacing", tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)))
    notes = list(meta.get("notes", []))
    if registered:
        registration = identity_registration()
    else:
        registration = register_affine(array, affine, valid=valid)
    notes.append(registration.describe())
    matrix = registration.matrix if registration.passed else registration.initial
    if matrix is None:
        matrix = registration.matrix
    image, valid_grid, covered = resample_to_grid(array, affine, matrix, grid, valid=valid)
    if mask is not None:
        brain = _user_mask_on_grid(mask, affine, array.shape, matrix, grid)
        mask_source = f"user mask {Path(mask).name} (--mask)"
    elif registration.passed:
        brain = grid.brain_mask().copy()
        mask_source = "template brain mask, warped by the registration"
    else:
        native = intensity_brain_mask(array, meta["spacing"], valid=valid)
        on_grid, _, _ = resample_to_grid(native.astype(np.float32), affine, matrix, grid, order=0)
        brain = on_grid > 0.5
        mask_source = (
            "intensity-based mask (Otsu, opening, largest component), because the "
            "registration failed its check"
        )
    notes.append(f"brain mask: {mask_source}")
    brain &= covered & valid_grid.astype(bool)
    template_area = grid.brain_mask().sum(axis=(0, 1))
    kept = brain.sum(axis=(0, 1)) >= min_plane_brain_fraction * template_area.max()
    if not kept.any():
        raise InputDataError(
            f'"{path}" holds no plane with enough brain on the model grid (a plane needs '
            f"{min_plane_brain_fraction:.0%} of the largest brain plane); check that the scan "
            "shows a brain, or pass --mask FILE (or --registered for data in template space)."
        )
    brain &= kept[None, None, :]
    standardised, centre, scale = robust_standardise(image, brain, standardisation)
    notes.append(
        f"kept {int(kept.sum())} of {grid.n_planes} model-grid planes (2-D slices of "
        f"{grid.size}x{grid.size}, {grid.plane_spacing:g} mm apart) that hold enough brain"
    )
    notes.append(
        f"standardised by {standardisation} over {int(brain.sum())} brain voxels "
        f"(centre {centre:.4g}, scale {scale:.4g})"
    )
    return PreparedScan(
        path=Path(path),
        slices=np.ascontiguousarray(standardised.transpose(2, 0, 1), dtype=np.float64),
        brain=np.ascontiguousarray(brain.transpose(2, 0, 1)),
        kept=kept,
        covered=covered,
        registration=registration,
        matrix=np.asarray(matrix, dtype=np.float64),
        grid=grid,
        native_affine=np.asarray(affine, dtype=np.float64),
        native_shape=tuple(int(s) for s in array.shape),
        mask_source=mask_source,
        standardisation={"method": standardisation, "centre": centre, "scale": scale},
        notes=tuple(notes),
        meta=meta,
    )
