"""Affine bookkeeping shared by the spatial transforms: RAS/LPS, SimpleITK images, the template.

World coordinates are RAS+ millimetres everywhere in medsi (nibabel's and MONAI's
convention): x grows to the subject's Right, y to Anterior, z to Superior. ITK and SimpleITK
work in LPS+ (x to Left, y to Posterior), so a point changes sign in x and y when it crosses
the boundary; :data:`RAS_FROM_LPS` is that flip (it is its own inverse).

An *affine* is a (4, 4) float64 matrix mapping a voxel index ``(i, j, k, 1)`` (0-based, the
array's axis order, the centre of the voxel) to a world point ``(x, y, z, 1)``.
"""

from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medsi.errors import ConfigError, InputDataError

__all__ = [
    "RAS_FROM_LPS",
    "TEMPLATE_DIR",
    "affine_to_sitk",
    "sitk_to_affine",
    "split_shear",
    "check_affine",
    "load_template",
]

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""(4, 4) flip of x and y: maps LPS+ points to RAS+ points and back."""

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "assets" / "atlas"
"""Folder of the bundled MNI152 2009a symmetric template (see its README.md)."""


# Columns of a voxel-to-world matrix count as orthogonal when their cosines are below this.
_ORTHOGONAL_TOL = 1e-4


def check_affine(affine: np.ndarray, name: str = "affine") -> np.ndarray:
    """Return ``affine`` as a (4, 4) float64 array after checking it is a usable geometry.

    Parameters
    ----------
    affine
        Voxel-to-world matrix, (4, 4), RAS+ mm (a torch tensor is accepted too).
    name
        Name of the argument, used in the error message.

    Returns
    -------
    numpy.ndarray
        (4, 4) float64 copy.

    Raises
    ------
    InputDataError
        If the matrix is not (4, 4), holds non-finite values, has a last row other than
        (0, 0, 0, 1) or a singular 3 x 3 part.
    """
    if hasattr(affine, "detach"):  # torch tensor (MetaTensor.affine)
        affine = affine.detach().cpu().numpy()
    a = np.array(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise InputDataError(
            f'"{name}" must be a finite (4, 4) voxel-to-world matrix, got shape {a.shape}; '
            "pass the scan's RAS+ affine (MetaTensor.affine)."
        )
    if not np.allclose(a[3], [0.0, 0.0, 0.0, 1.0]):
        raise InputDataError(
            f'"{name}" must have the last row (0, 0, 0, 1), got {a[3].tolist()}; '
            "pass a homogeneous voxel-to-world matrix."
        )
    if abs(np.linalg.det(a[:3, :3])) < 1e-9:
        raise InputDataError(
            f'"{name}" must have an invertible 3 x 3 part, got determinant '
            f"{np.linalg.det(a[:3, :3]):.3g}; fix the voxel sizes or directions of the scan."
        )
    return a


def split_shear(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Write a voxel-to-world matrix as a world-space map after an orthogonal one.

    ``affine = correction @ orthogonal`` where ``orthogonal`` has orthogonal columns (so an
    ITK image can hold it: origin, spacing, direction) and the same origin, and
    ``correction`` is an affine map of world space that is the identity when ``affine`` is
    already orthogonal. The orthogonal part comes from a QR decomposition of the 3 x 3 part
    (first column kept in direction, positive spacings).

    Parameters
    ----------
    affine
        (4, 4) voxel-to-world matrix.

    Returns
    -------
    orthogonal : numpy.ndarray
        (4, 4) voxel-to-world matrix with orthogonal columns.
    correction : numpy.ndarray
        (4, 4) world-to-world matrix, ``correction = affine @ inv(orthogonal)``.
    """
    a = check_affine(affine)
    q, r = np.linalg.qr(a[:3, :3])
    signs = np.where(np.diag(r) < 0, -1.0, 1.0)
    q = q * signs
    r = signs[:, None] * r
    orthogonal = np.eye(4)
    orthogonal[:3, :3] = q * np.diag(r)
    orthogonal[:3, 3] = a[:3, 3]
    return orthogonal, a @ np.linalg.inv(orthogonal)


def _is_orthogonal(linear: np.ndarray) -> bool:
    unit = linear / np.linalg.norm(linear, axis=0)
    gram = unit.T @ unit
    return bool(np.all(np.abs(gram - np.eye(3)) < _ORTHOGONAL_TOL))


def affine_to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """Make a SimpleITK image of a voxel array and its RAS+ affine.

    Parameters
    ----------
    array
        (X, Y, Z) voxel values, indexed like the affine's voxel axes. Bool arrays become
        uint8 images.
    affine
        (4, 4) voxel-to-world matrix, RAS+ mm, with orthogonal columns (see
        :func:`split_shear` for one that is not).

    Returns
    -------
    SimpleITK.Image
        3-D image whose index ``(i, j, k)`` is ``array[i, j, k]`` and whose origin, spacing and
        direction describe the same voxels in ITK's LPS+ space: origin = LPS point of voxel 0,
        spacing = column norms, direction = the normalised columns flipped in x and y.

    Raises
    ------
    ConfigError
        If ``array`` is not 3-D or ``affine`` has non-orthogonal columns.
    InputDataError
        If ``affine`` is not a valid voxel-to-world matrix.
    """
    a = check_affine(affine)
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise ConfigError(
            f'"array" must be 3-D (X, Y, Z), got shape {arr.shape}; drop the channel axis first.'
        )
    if not _is_orthogonal(a[:3, :3]):
        raise ConfigError(
            '"affine" must have orthogonal columns to become an ITK image, got a sheared '
            f"matrix {np.round(a[:3, :3], 4).tolist()}; split it with split_shear() and "
            "apply the correction in world space."
        )
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    lps = RAS_FROM_LPS @ a
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    # GetImageFromArray reads numpy axes as (z, y, x): transpose so that index (i, j, k)
    # of the ITK image is array[i, j, k].
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    image.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    return image


def sitk_to_affine(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`affine_to_sitk`: the voxel array and RAS+ affine of an ITK image.

    Parameters
    ----------
    image
        3-D SimpleITK image.

    Returns
    -------
    array : numpy.ndarray
        (X, Y, Z) voxel values, ``array[i, j, k]`` = the image at index ``(i, j, k)``.
    affine : numpy.ndarray
        (4, 4) float64 voxel-to-world matrix in RAS+ mm.

    Raises
    ------
    ConfigError
        If the image is not 3-D.
    """
    if image.GetDimension() != 3:
        raise ConfigError(
            f'"image" must be a 3-D SimpleITK image, got {image.GetDimension()}-D; extract '
            "one volume first."
        )
    lps = np.eye(4)
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps[:3, :3] = direction * np.array(image.GetSpacing(), dtype=np.float64)
    lps[:3, 3] = image.GetOrigin()
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    return np.ascontiguousarray(array), RAS_FROM_LPS @ lps


@lru_cache(maxsize=1)
def _template_volumes() -> dict[str, np.ndarray]:
    from medsi.assets import read_atlas

    atlas, affine = read_atlas()
    volumes = {"t1": atlas["t1"], "gm": atlas["grey_matter"], "wm": atlas["white_matter"]}
    volumes["affine"] = np.array(affine, dtype=np.float64)
    volumes["brain"] = volumes["t1"] > 0
    for value in volumes.values():
        value.setflags(write=False)
    return volumes


def load_template() -> dict[str, np.ndarray]:
    """The bundled template, read once and cached (read-only arrays).

    Returns
    -------
    dict
        ``"t1"``, ``"gm"``, ``"wm"``: (197, 233, 189) float32, values 0..255 (T1 intensity,
        grey- and white-matter probability x 255); ``"brain"``: bool brain mask
        (``t1 > 0``); ``"affine"``: (4, 4) RAS+ voxel-to-world matrix (1 mm voxels).
    """
    return dict(_template_volumes())
