"""Files medsi ships: the brain template, the default model bundle and a real example scan.

:func:`read_atlas` is the one place the MNI152 template files are read (see
``atlas/README.md`` for their source and copyright notice).
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import as_file, files
from pathlib import Path

import numpy as np

from medsi.errors import InputDataError

__all__ = ["ATLAS_FILES", "read_atlas", "read_volume"]

ATLAS_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "grey_matter": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "white_matter": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
"""The template volumes, by name: T1 (skull-stripped) and the grey/white-matter maps."""


def read_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One NIfTI volume as float32 with its affine; a clear error if it cannot be read."""
    import nibabel as nib

    try:
        image = nib.load(path)
        return np.asarray(image.dataobj, dtype=np.float32), np.asarray(image.affine, float)
    except Exception as e:  # missing file, truncated gzip, not NIfTI, ...
        raise InputDataError(
            f'"{path.name}" could not be read as a NIfTI image ({type(e).__name__}: {e}); '
            "reinstall medsi to restore medsi/assets/atlas."
        ) from e


@lru_cache(maxsize=1)
def read_atlas() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The template volumes (values 0..255 as stored, float32, read-only) and their affine.

    Returns
    -------
    volumes : dict
        ``"t1"``, ``"grey_matter"``, ``"white_matter"``: (197, 233, 189) arrays.
    affine : numpy.ndarray
        (4, 4) RAS+ voxel-to-world matrix shared by the three (1 mm voxels).

    Raises
    ------
    InputDataError
        If a file is missing or unreadable, or the files do not share one grid.
    """
    volumes, affines = {}, []
    for key, name in ATLAS_FILES.items():
        with as_file(files("medsi.assets") / "atlas" / name) as path:
            volumes[key], affine = read_volume(Path(path))
        affines.append(affine)
    shapes = {v.shape for v in volumes.values()}
    if len(shapes) != 1 or any(not np.allclose(a, affines[0]) for a in affines):
        raise InputDataError(
            f"the template volumes must share one grid, got shapes {sorted(shapes)}; "
            "reinstall medsi to restore medsi/assets/atlas."
        )
    for volume in volumes.values():
        volume.setflags(write=False)
    affine = affines[0]
    affine.setflags(write=False)
    return volumes, affine
