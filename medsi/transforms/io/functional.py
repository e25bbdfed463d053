"""Pure functions that load a scan (NIfTI file or DICOM series) into a :class:`Scan`.

:func:`load_scan` picks the reader from the path; :func:`load_nifti` and
:func:`load_dicom_series` do the work; :func:`write_dicom_series` goes the other way, for
NIfTI inputs whose results must be exported as DICOM. The output contract is in the package
docstring (:mod:`medsi.transforms.io`).
"""

from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from medsi.errors import ConfigError, InputDataError
from medsi.transforms.io._common import (
    MIN_AXIS_VOXELS,
    Scan,
    as_path,
    check_affine,
    check_volume_index,
    finish_scan,
    mask_nonfinite,
    one_line,
)
from medsi.transforms.io._dicom_read import CARRIED_ATTRIBUTES, load_series_files
from medsi.transforms.io._dicom_write import write_dicom_series

__all__ = [
    "MIN_AXIS_VOXELS",
    "CARRIED_ATTRIBUTES",
    "Scan",
    "load_scan",
    "load_nifti",
    "load_dicom_series",
    "mask_nonfinite",
    "write_dicom_series",
]

_QUATERNION_TOL = 1e-6  # b^2 + c^2 + d^2 may exceed 1 by float32 rounding, not more


def _is_dicom_file(path: Path) -> bool:
    """Whether the file has the DICOM preamble and "DICM" prefix (PS3.10 7.1)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _qform_problem(header: Any) -> str | None:
    """Describe why a header's qform quaternion is not a rotation, or return None."""
    if int(header["qform_code"]) <= 0:
        return None
    b, c, d = (float(header[f"quatern_{x}"]) for x in "bcd")
    norm2 = b * b + c * c + d * d
    if np.isfinite(norm2) and norm2 <= 1 + _QUATERNION_TOL:
        return None
    return (
        f"its qform quaternion (quatern_b, quatern_c, quatern_d) = ({b:g}, {c:g}, {d:g}) has "
        f"b^2 + c^2 + d^2 = {norm2:.4g} > 1, so it is not a rotation"
    )


def _header_only(path: Path) -> Any | None:
    """Read just the NIfTI-1/2 header of a file nibabel refused to load, or None."""
    import nibabel as nib
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(path) as f:
            block = f.read(540)
    except Exception:
        return None
    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        size = klass.template_dtype.itemsize
        for order in ("little", "big"):
            if len(block) >= size and int.from_bytes(block[:4], order) == size:
                try:
                    return klass(
                        block[:size], endianness="<" if order == "little" else ">", check=False
                    )
                except Exception:
                    return None
    return None


def _fix_header_hint() -> str:
    return (
        "fix the header with the tool that made the file (or re-save it with a valid "
        "sform/qform, e.g. nibabel or fslorient), or convert the original DICOM again"
    )


def _invalid_qform(source: str, problem: str) -> InputDataError:
    return InputDataError(
        f'"{source}" has an invalid orientation: {problem}, and there is no valid sform to '
        f"use instead; its position in space is unknown; {_fix_header_hint()}."
    )


def _open_nifti(path: Path) -> Any:
    import nibabel as nib

    try:
        image = nib.load(path, mmap=False)
    except Exception as e:
        header = _header_only(path) if isinstance(e, ValueError) else None
        problem = _qform_problem(header) if header is not None else None
        if problem is not None:
            raise _invalid_qform(str(path), problem) from e
        raise InputDataError(
            f'"{path}" could not be read as a NIfTI image ({type(e).__name__}: {one_line(e)}); the '
            "file is empty, damaged or in another format; pass a .nii or .nii.gz file, or "
            "a folder holding a DICOM series."
        ) from e
    if not isinstance(image, nib.Nifti1Pair):  # NIfTI-1 and -2, single file or pair
        raise InputDataError(
            f'"{path}" is a {type(image).__name__}, not a NIfTI image; medsi reads NIfTI '
            "and DICOM; convert it to NIfTI (e.g. with mri_convert or nibabel) first."
        )
    return image


def _nifti_affine(image: Any, source: str, notes: list[str]) -> tuple[np.ndarray, str]:
    """Choose the voxel-to-world matrix: a usable sform, else a valid qform (NIfTI rules)."""
    header = image.header
    sform, sform_code = header.get_sform(coded=True)
    qform_code = int(header["qform_code"])
    problem = _qform_problem(header)
    if sform_code > 0 and check_affine(sform):
        if problem is not None:
            notes.append(f"ignored the invalid qform ({problem}) and used the sform")
        return np.asarray(sform, dtype=np.float64), "sform"
    if qform_code > 0:
        if problem is not None:
            raise _invalid_qform(source, problem)
        qform = np.asarray(header.get_qform(), dtype=np.float64)
        if not check_affine(qform):
            raise InputDataError(
                f'"{source}" has a degenerate qform (voxel sizes pixdim '
                f"{header['pixdim'][1:4].tolist()}) and no usable sform; {_fix_header_hint()}."
            )
        if sform_code > 0:
            notes.append("the sform is degenerate (zero or not finite): used the qform")
        return qform, "qform"
    if sform_code > 0:
        raise InputDataError(
            f'"{source}" has a degenerate sform {np.asarray(sform).tolist()} and no qform; '
            f"its position in space is unknown; {_fix_header_hint()}."
        )
    base = np.asarray(header.get_base_affine(), dtype=np.float64)
    if not check_affine(base):
        raise InputDataError(
            f'"{source}" has no orientation (qform_code and sform_code are 0) and voxel sizes '
            f"pixdim {header['pixdim'][1:4].tolist()} that are not all positive; "
            f"{_fix_header_hint()}."
        )
    notes.append(
        "the header holds no orientation (qform_code and sform_code are 0): assumed the "
        "voxel axes are RAS+ with the pixdim voxel sizes, centred on the volume"
    )
    return base, "none"


def load_nifti(path: str | PathLike, volume: int = 0) -> Scan:
    """Load a 3-D NIfTI image, or one volume of a 4-D one.

    Parameters
    ----------
    path
        A ``.nii`` or ``.nii.gz`` file (NIfTI-1 or -2; a ``.hdr``/``.img`` pair also works).
    volume
        0-based index of the volume to use when the file is 4-D. Trailing axes of size 1
        beyond the third are dropped first, so (X, Y, Z, 1) is 3-D.

    Returns
    -------
    Scan
        The intensities scaled once by ``scl_slope``/``scl_inter`` (not at all when the
        slope is 0 or not finite, as the NIfTI standard says), float32, with the affine
        from the sform if usable, else the qform.

    Raises
    ------
    InputDataError
        If the file is missing, empty, truncated, corrupt or not NIfTI; its orientation is
        invalid (qform quaternion that is not a rotation, degenerate matrices) with no
        valid alternative; it holds complex or RGB values; it is not 3-D or 4-D; an axis has
        fewer than :data:`MIN_AXIS_VOXELS` voxels; or no voxel is finite.
    ConfigError
        If ``volume`` is negative or not below the number of volumes.
    TypeError
        If ``path`` or ``volume`` has the wrong type.
    """
    location = as_path(path)
    volume = check_volume_index(volume)
    source = str(location)
    if location.is_dir():
        raise InputDataError(
            f'"{source}" is a folder, not a NIfTI file; pass a .nii/.nii.gz file, or load '
            "the folder as a DICOM series."
        )
    image = _open_nifti(location)
    dtype = image.get_data_dtype()
    if dtype.kind not in "biuf":
        raise InputDataError(
            f'"{source}" holds {dtype} values (complex or RGB); medsi needs one real '
            "intensity per voxel; pass a magnitude or greyscale image."
        )
    notes: list[str] = []
    affine, affine_source = _nifti_affine(image, source, notes)

    shape = tuple(int(n) for n in image.shape)
    squeezed = list(shape)
    while len(squeezed) > 3 and squeezed[-1] == 1:
        squeezed.pop()
    if len(squeezed) not in (3, 4):
        raise InputDataError(
            f'"{source}" must hold a 3-D volume or a 4-D series of volumes, got '
            f"{len(squeezed)}-D shape {shape}; pass a 3-D or 4-D NIfTI file (split other "
            "data, e.g. with fslsplit, first)."
        )
    n_volumes = squeezed[3] if len(squeezed) == 4 else 1
    if volume >= n_volumes:
        raise ConfigError(
            f'"volume" must be below the number of volumes of "{source}", which holds '
            f"{n_volumes} volume(s), got {volume}; pass --volume between 0 and {n_volumes - 1}."
        )
    if len(shape) > 3 and n_volumes == 1:
        notes.append(f"file shape {shape} has trailing axes of size 1: read as a 3-D volume")
    if n_volumes > 1:
        notes.append(f"4-D file with {n_volumes} volumes: used volume {volume} (--volume)")

    try:
        # Stored values, read in full so a truncated file cannot pass unnoticed.
        raw = np.asarray(image.dataobj.get_unscaled())
    except Exception as e:
        raise InputDataError(
            f'"{source}" could not be read: its data is truncated or corrupt '
            f"({type(e).__name__}: {one_line(e)}); copy or export the file again."
        ) from e
    raw = raw.reshape(squeezed)
    if len(squeezed) == 4:
        raw = raw[..., volume]
    # nibabel has already turned a zero or non-finite scl_slope into (1, 0): no scaling.
    slope, intercept = float(image.dataobj.slope), float(image.dataobj.inter)
    with np.errstate(over="ignore", invalid="ignore"):
        data = raw.astype(np.float64)
        if (slope, intercept) != (1.0, 0.0):
            data = data * slope + intercept  # the only place the header scaling is applied
            notes.append(f"intensities scaled once by scl_slope {slope:g}, scl_inter {intercept:g}")
    meta: dict[str, Any] = {
        "filename_or_obj": source,
        "source_format": "nifti",
        "volume_index": volume,
        "n_volumes": n_volumes,
        "file_shape": shape,
        "data_dtype": str(dtype),
        "scl_slope": slope,
        "scl_inter": intercept,
        "affine_source": affine_source,
        "notes": notes,
    }
    return finish_scan(data, affine, meta, source)


def load_dicom_series(folder: str | PathLike, volume: int = 0, series: str | None = None) -> Scan:
    """Load a classic DICOM image series (one file per slice) from a folder.

    Every file under ``folder`` (sub-folders too) is tried; those that are not DICOM or not
    images are skipped with a note. Slices are sorted along the slice normal (the cross
    product of the ImageOrientationPatient row and column directions, dotted with
    ImagePositionPatient), stored values are rescaled once by RescaleSlope/RescaleIntercept,
    and the LPS+ geometry is converted to RAS+.

    Parameters
    ----------
    folder
        The folder holding the series.
    volume
        Must be 0: a classic series holds one volume (kept for symmetry with NIfTI).
    series
        SeriesInstanceUID of the series to load; None when the folder holds one series.

    Returns
    -------
    Scan
        Array axes: X along a DICOM row (column index), Y down a column (row index), Z over
        the slices in ascending position along the normal; ``meta["sop_instance_uids"]``
        and ``meta["dicom_files"]`` follow Z.

    Raises
    ------
    InputDataError
        If the folder holds no DICOM image; holds several series and ``series`` is None (the
        message lists them); the series is multi-frame (e.g. Enhanced MR); slices lack or
        disagree on Rows, Columns, PixelSpacing, ImageOrientationPatient, FrameOfReferenceUID
        or ImagePositionPatient; two slices share a position; the spacing has a gap or is
        uneven; the stack is tilted or sheared; the pixel data cannot be decoded (the
        message names the transfer syntax); the rescale values are invalid; or the volume
        is too small.
    ConfigError
        If ``series`` is not in the folder or ``volume`` is not 0.
    TypeError
        If an argument has the wrong type.
    """
    location = as_path(folder, "folder")
    if not location.is_dir():
        raise InputDataError(
            f'"{location}" is a file, not a folder; pass the folder that holds the series '
            "(or use load_scan, which also takes one file of a series)."
        )
    files = sorted(p for p in location.rglob("*") if p.is_file())
    return load_series_files(location, files, volume=volume, series=series)


def load_scan(path: str | PathLike, volume: int = 0, series: str | None = None) -> Scan:
    """Load a scan from a NIfTI file, a DICOM folder or one file of a DICOM series.

    Parameters
    ----------
    path
        A folder (read as a DICOM series, see :func:`load_dicom_series`); a file that starts
        with the DICOM preamble (the series it belongs to is read from the files beside
        it); or any other file (read as NIfTI, see :func:`load_nifti`).
    volume
        Volume of a 4-D NIfTI file (0-based); must be 0 for DICOM.
    series
        SeriesInstanceUID to choose among several DICOM series; must be None for NIfTI.

    Returns
    -------
    Scan
        Intensities, valid mask, RAS+ affine and meta; see the package docstring.

    Raises
    ------
    InputDataError
        If the input is unreadable or inconsistent; see :func:`load_nifti` and
        :func:`load_dicom_series`.
    ConfigError
        If ``volume`` or ``series`` does not fit the input.
    TypeError
        If an argument has the wrong type.
    """
    location = as_path(path)
    if location.is_dir():
        return load_dicom_series(location, volume=volume, series=series)
    if _is_dicom_file(location):
        import pydicom

        try:
            own = str(pydicom.dcmread(location, stop_before_pixels=True).SeriesInstanceUID)
        except Exception as e:
            raise InputDataError(
                f'"{location}" starts like a DICOM file but has no readable '
                f"SeriesInstanceUID ({type(e).__name__}: {one_line(e)}); pass the folder of the "
                "series or a NIfTI file."
            ) from e
        if series is not None and series != own:
            raise ConfigError(
                f'"series" must match the file given, got "{series}" but "{location.name}" '
                f"belongs to series {own}; pass the folder instead of one file, or drop "
                "--series."
            )
        folder = location.parent
        files = sorted(p for p in folder.iterdir() if p.is_file())
        scan = load_series_files(folder, files, volume=volume, series=own)
        scan.meta["notes"].insert(
            0, f'one DICOM file was given: loaded its whole series from "{folder}"'
        )
        return scan
    if series is not None:
        raise ConfigError(
            f'"series" selects a DICOM series, but "{location}" is not DICOM, got series '
            f'"{series}"; drop --series for NIfTI files.'
        )
    return load_nifti(location, volume=volume)
