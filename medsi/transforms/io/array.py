"""One-image transform: a path in, the scan as a ``MetaTensor`` and its valid mask out."""

import copy
from os import PathLike

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Transform

from medsi.transforms.io.functional import Scan, load_scan

__all__ = ["LoadScan", "scan_to_metatensors"]


def scan_to_metatensors(scan: Scan) -> tuple[MetaTensor, MetaTensor]:
    """Wrap a :class:`Scan` as channel-first ``MetaTensor`` objects.

    Parameters
    ----------
    scan
        A loaded scan.

    Returns
    -------
    image : MetaTensor
        (1, X, Y, Z) float32 intensities with ``.affine`` the RAS+ voxel-to-world matrix
        (float64) and ``.meta`` the scan's meta.
    valid : MetaTensor
        (1, X, Y, Z) bool, False where the file held NaN or infinity; same affine, a copy
        of the meta.
    """
    affine = torch.as_tensor(scan.affine, dtype=torch.float64)
    image = MetaTensor(
        torch.from_numpy(np.ascontiguousarray(scan.array[None], dtype=np.float32)),
        affine=affine,
        meta=copy.deepcopy(scan.meta),
    )
    valid = MetaTensor(
        torch.from_numpy(np.ascontiguousarray(scan.valid[None], dtype=bool)),
        affine=affine.clone(),
        meta=copy.deepcopy(scan.meta),
    )
    return image, valid


class LoadScan(Transform):
    """Load a NIfTI file or a DICOM series as a ``MetaTensor`` and its valid mask.

    Parameters
    ----------
    volume
        0-based volume of a 4-D NIfTI file (``--volume``); must be 0 for DICOM.
    series
        SeriesInstanceUID when a DICOM folder holds several series (``--series``).

    Examples
    --------
    >>> from medsi.assets import __file__ as assets
    >>> from pathlib import Path
    >>> image, valid = LoadScan()(Path(assets).parent / "examples" / "S0_10slices.nii.gz")
    >>> tuple(image.shape), image.dtype, tuple(valid.shape), valid.dtype
    ((1, 128, 128, 10), torch.float32, (1, 128, 128, 10), torch.bool)
    """

    def __init__(self, volume: int = 0, series: str | None = None) -> None:
        self.volume = volume
        self.series = series

    def __call__(self, path: str | PathLike) -> tuple[MetaTensor, MetaTensor]:
        """Load ``path``; see :func:`medsi.transforms.io.functional.load_scan`.

        Parameters
        ----------
        path
            NIfTI file, DICOM folder, or one file of a DICOM series.

        Returns
        -------
        image : MetaTensor
            (1, X, Y, Z) float32, RAS+ affine; NaN and infinite voxels set to 0.
        valid : MetaTensor
            (1, X, Y, Z) bool, False at the voxels that were NaN or infinite.

        Raises
        ------
        InputDataError
            If the input is unreadable or inconsistent.
        ConfigError
            If ``volume`` or ``series`` does not fit the input.
        """
        return scan_to_metatensors(load_scan(path, volume=self.volume, series=self.series))
